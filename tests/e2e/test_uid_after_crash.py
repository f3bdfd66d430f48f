"""A crash between SMTP's 250 and the message's UID loses nothing.

SMTP answers once the file is durable in new/; the UID comes afterwards, in a batch
under dovecot-uidlist.lock. Here the test holds that lock (as Dovecot would while it
syncs), so a real ``twistd mailhost`` with INBOX open in an IMAP session answers 250
but cannot number the messages; it is then killed with SIGKILL. After a restart the
messages are there with UIDs, and Dovecot, serving a copy of the Maildir, shows the
same UIDVALIDITY, UIDs and UIDNEXT.
"""

from __future__ import annotations

import imaplib
import os
import smtplib
import time

import pytest

from mailhost.store._maildir.dotlock import DotLock
from mailhost.store._maildir.dovecot_uidlist import UIDLIST_FILE, UidList
from tests.e2e.test_imap_dovecot import Dovecot
from tests.e2e.test_uidlist_dovecot import dovecot_view, msg, need_dovecot

A = "alice@example.test"
PW = "alice-pw"


def our_view(port: int) -> tuple[int, int, dict]:
    c = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    c.login(A, PW)
    try:
        return dovecot_view(c)  # the same questions, asked of mailhost
    finally:
        c.logout()


@pytest.mark.slow
def test_kill_9_between_250_and_uid_then_restart_numbers_them_as_dovecot_does(
        mailhost_proc):
    need_dovecot()
    home = mailhost_proc.maildir(A)
    smtp_port, imap_port = mailhost_proc.ports["smtp"], mailhost_proc.ports["imap"]
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
        s.sendmail("x@elsewhere.test", [A], msg(1))
    c = imaplib.IMAP4("127.0.0.1", imap_port, timeout=30)
    c.login(A, PW)
    typ, data = c.select("INBOX")  # open in the server now: deliveries go to its batches
    assert typ == "OK" and data == [b"1"]
    lock = DotLock(os.path.join(home, UIDLIST_FILE))
    lock.acquire()
    try:
        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
            for n in (2, 3, 4):
                s.sendmail("x@elsewhere.test", [A], msg(n))  # 250 while we hold the lock
        assert time.monotonic() - started < 20
        files = os.listdir(os.path.join(home, "new")) + os.listdir(os.path.join(home, "cur"))
        assert len(files) == 4
        ul = UidList(os.path.join(home, UIDLIST_FILE))
        assert ul.refresh() and sorted(ul.by_base.values()) == [1]  # not numbered yet
        mailhost_proc.kill()  # SIGKILL: the batch never ran
    finally:
        lock.release()
    try:
        c.logout()
    except (OSError, imaplib.IMAP4.abort):
        pass

    mailhost_proc.start()
    ours = our_view(imap_port)
    assert sorted(ours[2]) == [b"<u%d@test>" % n for n in (1, 2, 3, 4)]
    assert ours[2][b"<u1@test>"] == 1
    assert sorted(ours[2].values()) == [1, 2, 3, 4] and ours[1] == 5
    mailhost_proc.stop()

    dv = Dovecot(os.path.dirname(os.path.dirname(home)), {A: PW})
    try:
        dv.start()
        c = imaplib.IMAP4("127.0.0.1", dv.port, timeout=10)
        c.login(A, PW)
        theirs = dovecot_view(c)
        c.logout()
    finally:
        dv.stop()
    assert theirs == ours
