"""Twisted's own cred checkers, plugged in through the front door and nothing else.

Regression (issue 20): checkers got ``str`` credentials, so every bytes-based checker,
Twisted's ``InMemoryUsernamePasswordDatabaseDontUse`` and ``FilePasswordDB`` included,
failed every login silently; and a checker alone let users log in over IMAP while SMTP
answered ``550 5.1.1`` for them until a separate ``UserDirectory`` listed them again.
Now the checker is the one declaration: IMAP, POP3 and SMTP AUTH log in with it, and SMTP
delivers to its users. Like test_embedding.py, this module uses mailhost only through
``import mailhost`` (checked below).
"""

from __future__ import annotations

import hashlib
import imaplib
import poplib
import smtplib

import pytest_twisted
from twisted.cred.checkers import FilePasswordDB, InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import threads

from mailhost import MemoryStore, load, makeService

LOOPBACK = "tcp:0:interface=127.0.0.1"


def host_config(data_dir):
    return load(None, [
        f'server.data_dir="{data_dir}"', 'server.domains=["example.test"]',
        'server.allow_plaintext_auth="loopback"', "auth.create_postmaster=false",
        "outbound.enabled=false", "server.shutdown_grace=0.0", "auth.max_failures=0",
        f'smtp.listen=["{LOOPBACK}"]', f'submission.listen=["{LOOPBACK}"]',
        f'pop3.listen=["{LOOPBACK}"]', f'imap.listen=["{LOOPBACK}"]',
    ])


def mail_round_trip(ports, user, password):
    """Deliver to ``user`` over SMTP, log in with SMTP AUTH, read it over IMAP and POP3."""
    out = {}
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s:
        out["rcpt_unknown"] = (s.ehlo(), s.mail("x@elsewhere.test"),
                               s.rcpt("nobody@example.test"))[2][0]
        s.rset()
        s.sendmail("x@elsewhere.test", [user.upper()],
                   b"Subject: via a Twisted checker\r\n\r\nhi\r\n")
    with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=30) as s:
        out["smtp_auth"] = s.login(user, password)[0]
    m = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=30)
    try:
        m.login(user, "wrong")
        out["imap_wrong"] = "OK"
    except imaplib.IMAP4.error:
        out["imap_wrong"] = "NO"
    out["imap_login"] = m.login(f" {user.title()} ", password)[0]
    m.select("INBOX")
    out["imap_subject"] = m.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)])")[1][0][1].strip()
    m.logout()
    p = poplib.POP3("127.0.0.1", ports["pop3"], timeout=30)
    p.user(user)
    out["pop3_login"] = p.pass_(password)
    out["pop3_count"] = p.stat()[0]
    p.quit()
    return out


async def serve(tmp_path, checker):
    svc = makeService(host_config(tmp_path), store=MemoryStore(), checkers=[checker])
    svc.startService()
    try:
        ports = {k: v[0].getHost().port for k, v in (await svc.wait_listening()).items()}
        return await threads.deferToThread(mail_round_trip, ports, "alice@example.test",
                                           "sesame")
    finally:
        await svc.stopService()


def assert_everything_worked(out):
    assert out["rcpt_unknown"] == 550  # only the checker's users receive mail
    assert out["smtp_auth"] == 235
    assert out["imap_wrong"] == "NO"
    assert out["imap_login"] == "OK"
    assert out["imap_subject"] == b"Subject: via a Twisted checker"
    assert out["pop3_login"].startswith(b"+OK")
    assert out["pop3_count"] == 1


@pytest_twisted.ensureDeferred
async def test_twisted_in_memory_checker_logs_in_and_receives_mail(tmp_path):
    db = InMemoryUsernamePasswordDatabaseDontUse()
    db.addUser(b"alice@example.test", b"sesame")
    assert_everything_worked(await serve(tmp_path, db))


@pytest_twisted.ensureDeferred
async def test_twisted_file_checker_logs_in_and_receives_mail(tmp_path):
    users = tmp_path / "users.txt"
    users.write_bytes(b"alice@example.test:sesame\n")
    assert_everything_worked(await serve(tmp_path, FilePasswordDB(str(users))))


@pytest_twisted.ensureDeferred
async def test_twisted_file_checker_with_hashed_passwords(tmp_path):
    """``hash=`` gets the bytes Twisted documents: (username, network password, stored)."""
    def sha256(username, password, stored):
        assert isinstance(username, bytes) and isinstance(password, bytes)
        return hashlib.sha256(password).hexdigest().encode()

    users = tmp_path / "users.txt"
    users.write_bytes(b"Alice@Example.test:" + hashlib.sha256(b"sesame").hexdigest().encode()
                      + b"\n")
    checker = FilePasswordDB(str(users), hash=sha256, caseSensitive=False)
    assert_everything_worked(await serve(tmp_path, checker))


def test_this_module_uses_mailhost_through_the_front_door_only():
    import ast

    tree = ast.parse(open(__file__).read())
    used = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and node.module and node.module.split(".")[0] == "mailhost"}
    assert used == {"mailhost"}
