"""IMAP against a real ``twistd -n mailhost`` with mail delivered over SMTP.

Blocking clients only (no reactor needed): smtplib delivers, imapclient reads, IDLE
hears the delivery, APPEND/UID MOVE work on the real MaildirStore.
"""

from __future__ import annotations

import smtplib
import threading
import time

from imapclient import IMAPClient


def _imap(proc, user="alice@example.test", pw="alice-pw") -> IMAPClient:
    c = IMAPClient(proc.host, port=proc.ports["imap"], ssl=False, timeout=10)
    c.login(user, pw)
    return c


def _send(proc, subject: str, to: str = "alice@example.test") -> None:
    with smtplib.SMTP(proc.host, proc.ports["smtp"], timeout=10) as s:
        s.sendmail("bob@example.test", [to],
                   f"From: bob@example.test\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nhi\r\n")


def test_smtp_delivery_pushes_idle_and_is_fetchable(mailhost_proc):
    proc = mailhost_proc
    _send(proc, "first")
    c = _imap(proc)
    c.select_folder("INBOX")
    c.idle()
    result: dict = {}

    def deliver():
        time.sleep(0.3)
        result["t"] = time.monotonic()
        _send(proc, "second")

    t = threading.Thread(target=deliver)
    t.start()
    got = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (2, b"EXISTS") not in got:
        got += c.idle_check(timeout=1)
    woke = time.monotonic()
    t.join()
    c.idle_done()
    assert (2, b"EXISTS") in got
    assert woke - result["t"] < 1.0, "IDLE heard the SMTP delivery later than 1 s"
    msgs = c.fetch(c.search("ALL"), ["ENVELOPE", "BODY.PEEK[]"])
    subjects = [m[b"ENVELOPE"].subject for m in msgs.values()]
    assert subjects == [b"first", b"second"]
    assert all(b"Received:" in m[b"BODY[]"] for m in msgs.values())
    c.create_folder("Done")
    c.move([min(msgs)], "Done")
    assert len(c.search("ALL")) == 1
    c.append("Done", b"Subject: appended\r\n\r\nbody\r\n", flags=[b"\\Seen"])
    assert c.folder_status("Done", [b"MESSAGES"])[b"MESSAGES"] == 2
    c.logout()
    # Bob's session is separate; a wrong password is refused.
    b = _imap(proc, "bob@example.test", "bob-pw")
    assert b.select_folder("INBOX")[b"EXISTS"] == 0
    b.logout()
