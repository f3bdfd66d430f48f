"""SIGTERM: stop accepting, let SMTP transactions finish, BYE to IMAP, no POP3 DELE."""

from __future__ import annotations

import os
import poplib
import signal
import smtplib
import socket
import threading
import time

import pytest


def recv_until(sock: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    while marker not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def count_messages(mh, user="alice@example.test") -> int:
    root = mh.maildir(user)
    return sum(len(os.listdir(os.path.join(root, sub))) for sub in ("new", "cur"))


def test_sigterm_drains_sessions(mailhost_factory):
    mh = mailhost_factory(extra={"server": {"shutdown_grace": 15.0}})
    mh.start()
    with smtplib.SMTP("127.0.0.1", mh.ports["smtp"], timeout=30) as s:
        s.sendmail("x@elsewhere.test", ["alice@example.test"], b"Subject: one\r\n\r\n1\r\n")

    # An SMTP transaction in the middle of DATA.
    smtp = socket.create_connection(("127.0.0.1", mh.ports["smtp"]))
    recv_until(smtp, b"\r\n")
    smtp.sendall(b"EHLO c\r\n")
    recv_until(smtp, b"250 ")
    smtp.sendall(b"MAIL FROM:<x@elsewhere.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert b"354" in recv_until(smtp, b"354")
    smtp.sendall(b"Subject: in flight\r\n\r\n" + b"half of the body\r\n" * 100)

    # An idle IMAP session and a POP3 session with a pending DELE.
    imap = socket.create_connection(("127.0.0.1", mh.ports["imap"]))
    recv_until(imap, b"\r\n")
    imap.sendall(b"a1 LOGIN alice@example.test alice-pw\r\na2 SELECT INBOX\r\n")
    assert b"a2 OK" in recv_until(imap, b"a2 ")
    pop = poplib.POP3("127.0.0.1", mh.ports["pop3"], timeout=30)
    pop.user("alice@example.test")
    pop.pass_("alice-pw")
    pop.dele(1)

    os.kill(mh.pid, signal.SIGTERM)
    # IMAP hears BYE; new connections are refused promptly.
    assert b"* BYE" in recv_until(imap, b"* BYE")
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", mh.ports["imap"]), timeout=1).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        time.sleep(0.1)
    # The SMTP transaction under way finishes: 250, then 421 and close.
    smtp.sendall(b"the rest\r\n.\r\n")
    reply = recv_until(smtp, b"421")
    assert reply.startswith(b"250"), reply
    assert b"421 4.3.2" in reply
    with pytest.raises(poplib.error_proto):
        pop.stat()
    mh.proc.wait(20)
    assert count_messages(mh) == 2  # the pending DELE was not applied; the new mail is there


def test_sigterm_under_load_loses_nothing_acknowledged(mailhost_factory):
    mh = mailhost_factory(extra={"server": {"shutdown_grace": 10.0}})
    mh.start()
    acked, stop = [], threading.Event()
    lock = threading.Lock()

    def sender(worker: int) -> None:
        n = 0
        while not stop.is_set() and n < 400:
            try:
                with smtplib.SMTP("127.0.0.1", mh.ports["smtp"], timeout=20) as s:
                    while not stop.is_set() and n < 400:
                        s.sendmail("x@elsewhere.test", ["alice@example.test"],
                                   f"Subject: {worker}-{n}\r\n\r\nbody\r\n".encode())
                        with lock:
                            acked.append(f"{worker}-{n}")
                        n += 1
            except (OSError, smtplib.SMTPException):
                return

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    os.kill(mh.pid, signal.SIGTERM)
    mh.proc.wait(30)
    stop.set()
    for t in threads:
        t.join(30)
    assert acked, "no message was sent before the shutdown"
    assert count_messages(mh) >= len(acked)
