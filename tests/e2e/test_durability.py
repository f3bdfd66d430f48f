"""Durability: a message that got 250 survives ``kill -9`` of the server, exactly once."""

from __future__ import annotations

import os
import smtplib
import threading
from concurrent.futures import ThreadPoolExecutor

MESSAGES = 500
CONNECTIONS = 10


def message(n: int) -> bytes:
    return (f"From: sender@elsewhere.test\r\nTo: alice@example.test\r\n"
            f"Subject: durability {n}\r\nX-Seq: {n:05d}\r\n\r\n"
            + f"body of message {n}\r\n" * 20).encode()


def test_kill_9_after_last_250_loses_nothing(mailhost_proc):
    acked: list[int] = []
    lock = threading.Lock()
    port = mailhost_proc.ports["smtp"]

    def sender(worker: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
            for n in range(worker, MESSAGES, CONNECTIONS):
                s.sendmail("sender@elsewhere.test", ["alice@example.test"], message(n))
                with lock:  # sendmail returned: the server answered 250
                    acked.append(n)

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        list(pool.map(sender, range(CONNECTIONS)))
    mailhost_proc.kill()  # SIGKILL straight after the last 250
    assert len(acked) == MESSAGES

    mailhost_proc.start()  # a restart must find, index and serve them all
    found: dict[int, int] = {}
    root = mailhost_proc.maildir("alice@example.test")
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(root, sub)):
            with open(os.path.join(root, sub, name), "rb") as f:
                head = f.read(4096)
            seq = int(head.split(b"X-Seq: ", 1)[1][:5])
            found[seq] = found.get(seq, 0) + 1
    assert sorted(found) == sorted(acked)
    assert set(found.values()) == {1}, "a message was stored twice"

    # And the restarted server serves exactly those messages.
    import poplib

    pop = poplib.POP3("127.0.0.1", mailhost_proc.ports["pop3"], timeout=30)
    pop.user("alice@example.test")
    pop.pass_("alice-pw")
    assert pop.stat()[0] == MESSAGES
    pop.quit()
