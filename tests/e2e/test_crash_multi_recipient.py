"""A message for several local recipients is committed to all their mailboxes as one
unit (issue 17, item 15).

Before the fix, ``kill -9`` while a two-recipient message was being committed left
copies in the first mailbox only; the client, which never got its 250, sent the
message again, and the first mailbox then held it twice, the others once. Now the
copies go through a commit journal (mailhost/store/_maildir/maildir_io.py ``_commit_all``):
linked into every recipient's tmp/ first, then renamed into new/ after a commit
record; at the next start a crash's journal is rolled back (before the commit
record) or forward (after it). So whatever the instant of the kill, once the client
has retried, every mailbox holds the message the same number of times: once if the
kill came before the commit point, twice (the unavoidable SMTP duplicate, RFC 1047)
if it came after.

The window is widened with many recipients (the commit of one message then takes
milliseconds), and the kill is sent the moment the test sees the first copy appear:
in the first recipient's tmp/ (early: before the commit point) or new/ (late: during
the renames).
"""

from __future__ import annotations

import imaplib
import os
import signal
import smtplib
import threading
import time

import pytest

from mailhost.auth.hashing import hash_password
from mailhost.auth.passwd import PasswdEntry, PasswdFile
from tests.mailhost_process import MailHostProcess

RECIPIENTS = 400
USERS = [f"u{n:04d}@example.test" for n in range(RECIPIENTS)]


def message(trial: str) -> bytes:
    return (f"From: sender@elsewhere.test\r\nSubject: all or none\r\n"
            f"X-Trial: {trial}\r\n\r\n" + "body line\r\n" * 50).encode()


@pytest.fixture
def host(tmp_path):
    h = MailHostProcess(str(tmp_path), users={})
    os.makedirs(h.data_dir)
    # One hash for every user: 400 argon2 hashes would take minutes.
    hashed = hash_password("pw")
    PasswdFile(os.path.join(h.data_dir, "passwd")).save(
        {u: PasswdEntry(u, hashed) for u in USERS})
    h.start()
    yield h
    h.kill()


def copies(h: MailHostProcess, trial: str) -> list[int]:
    """How many copies of the trial's message each recipient's INBOX holds."""
    marker = f"X-Trial: {trial}\r\n".encode()
    out = []
    for user in USERS:
        root = h.maildir(user)
        n = 0
        for sub in ("new", "cur"):
            try:
                names = os.listdir(os.path.join(root, sub))
            except FileNotFoundError:
                continue
            for name in names:
                with open(os.path.join(root, sub, name), "rb") as f:
                    n += marker in f.read(4096)
        out.append(n)
    return out


def send(h: MailHostProcess, trial: str) -> bool:
    """True if the server answered 250 to the message's final dot."""
    try:
        with smtplib.SMTP("127.0.0.1", h.ports["smtp"], timeout=60) as s:
            s.sendmail("sender@elsewhere.test", USERS, message(trial))
        return True
    except (smtplib.SMTPException, OSError):
        return False


def open_a_mailbox(h: MailHostProcess) -> None:
    """Log in and select an INBOX: the store's first account after a start, before
    which it finishes what the crash interrupted."""
    c = imaplib.IMAP4("127.0.0.1", h.ports["imap"], timeout=60)
    c.login(USERS[-1], "pw")
    c.select("INBOX")
    c.logout()


def uniform(got: list[int], when: str) -> int:
    assert len(set(got)) == 1, (
        f"{when}: copies per mailbox differ: { {n: got.count(n) for n in sorted(set(got))} }")
    return got[0]


def kill_when_a_copy_appears(h: MailHostProcess, trial: str, watch: list[str]) -> bool:
    """Send the trial's message and SIGKILL the server as soon as a file appears in
    one of ``watch`` (directories of the first recipient). True if the kill came
    before the client got its 250."""
    before = {d: len(os.listdir(d)) for d in watch}
    result: list[bool] = []
    sender = threading.Thread(target=lambda: result.append(send(h, trial)))
    sender.start()
    deadline = time.monotonic() + 60
    killed = False
    while time.monotonic() < deadline and not killed and sender.is_alive():
        for d in watch:
            if len(os.listdir(d)) != before[d]:
                os.kill(h.pid, signal.SIGKILL)
                killed = True
                break
    sender.join(60)
    h.proc.wait(10)
    assert killed, "no copy appeared"
    return not result[0]


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["early", "late"])
def test_kill_9_during_a_multi_recipient_commit_then_retry_gives_every_mailbox_the_same(
        host, moment):
    assert send(host, "warm-up")  # every Maildir exists now: the commit is the window
    assert copies(host, "warm-up") == [1] * RECIPIENTS
    first = host.maildir(USERS[0])
    watch = [os.path.join(first, "new")]
    if moment == "early":
        watch.append(os.path.join(first, "tmp"))
    interrupted = 0
    for trial in range(2):
        name = f"{moment}-{trial}"
        if kill_when_a_copy_appears(host, name, watch):
            interrupted += 1
        host.start()
        open_a_mailbox(host)  # the interrupted commit is finished or taken back by now
        had = uniform(copies(host, name), f"trial {name}, after the restart")
        assert send(host, name)  # the client's retry
        assert uniform(copies(host, name), f"trial {name}, after the retry") == had + 1
    assert interrupted, "every kill came after the 250: the test proved nothing"
    # The store's tmp dir holds nothing left over.
    assert [n for n in os.listdir(os.path.join(host.data_dir, "mail", ".tmp"))] == []
