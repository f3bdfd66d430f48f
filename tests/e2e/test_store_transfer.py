"""``mailhost store export|import`` moves an account between Maildir and PostgreSQL
and no IMAP client can tell (issue 19): ``UID FETCH 1:* (UID FLAGS)``, UIDVALIDITY,
UIDNEXT, INTERNALDATE, the bytes, special-use and subscriptions are the same before
and after, over real sockets (imaplib), in both directions. The copy runs as the
operator runs it: the ``mailhost`` command in a subprocess, the servers stopped.
"""

from __future__ import annotations

import hashlib
import imaplib
import os
import re
import subprocess
import sys

import psycopg
import pytest_twisted
from twisted.internet import threads

from mailhost.service import makeService
from tests.e2e.test_foreign_store import PASSWORD, USER, config_in
from tests.e2e.test_postgresql_store import pg_config, upgraded

FOLDERS = ["INBOX", "Archive.2024", "Sent"]


def message(n: int) -> bytes:
    return (f"From: bob@remote.test\r\nTo: {USER}\r\nSubject: message {n}\r\n"
            f"Message-ID: <m{n}@remote.test>\r\n\r\nbody {n}\r\n" + "x" * (n * 97) + "\r\n"
            ).encode()


def fill(port: int) -> None:
    """Messages with flags, keywords and dates, an expunge (a gap in the UIDs), a new
    subscribed folder and an unsubscribed default one."""
    with imaplib.IMAP4("127.0.0.1", port, timeout=30) as c:
        c.login(USER, PASSWORD)
        assert c.create("Archive.2024")[0] == "OK"
        assert c.subscribe("Archive.2024")[0] == "OK"
        assert c.unsubscribe("Junk")[0] == "OK"
        flags = ["(\\Seen)", "(\\Seen $Forwarded)", "()", "(\\Flagged Project-X $Label1)",
                 "(\\Answered \\Draft)", "(\\Seen)"]
        for n, f in enumerate(flags):
            date = f'"0{n + 1}-Mar-2024 10:0{n}:00 +0100"'
            assert c.append("INBOX", f, date, message(n))[0] == "OK"
        for n in range(3):
            assert c.append("Archive.2024", "(\\Seen Project-X)", None, message(10 + n))[0] == "OK"
        assert c.append("Sent", "(\\Seen)", None, message(20))[0] == "OK"
        c.select("INBOX")
        assert c.uid("STORE", "2,5", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert c.expunge()[0] == "OK"
        c.select("Archive.2024")
        assert c.uid("STORE", "1", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert c.expunge()[0] == "OK"
        c.logout()


def snapshot(port: int) -> dict[str, object]:
    """What a client caches: per folder UIDVALIDITY, UIDNEXT and (UID, FLAGS,
    INTERNALDATE, a hash of the bytes); the subscriptions and special-use folders."""
    seen: dict[str, object] = {}
    with imaplib.IMAP4("127.0.0.1", port, timeout=30) as c:
        c.login(USER, PASSWORD)
        for name in FOLDERS:
            typ, data = c.status(name, "(UIDVALIDITY UIDNEXT MESSAGES)")
            assert typ == "OK"
            seen[f"{name} status"] = re.sub(rb"^.*?\(", b"(", data[0])
            assert c.select(name, readonly=True)[0] == "OK"
            typ, data = c.uid("FETCH", "1:*", "(UID FLAGS)")
            assert typ == "OK"
            seen[f"{name} uid flags"] = sorted(
                re.sub(rb"\\Recent ?", b"", line).replace(b" )", b")")
                for line in data if line)
            typ, data = c.uid("FETCH", "1:*", "(INTERNALDATE BODY.PEEK[])")
            assert typ == "OK"
            seen[f"{name} bodies"] = sorted(
                (re.search(rb'INTERNALDATE "[^"]+"', part[0]).group(0),
                 hashlib.sha256(part[1]).hexdigest())
                for part in data if isinstance(part, tuple))
        typ, data = c.lsub('""', "*")
        seen["lsub"] = sorted(re.sub(rb"^\([^)]*\) ", b"", line) for line in data)
        typ, data = c.list('""', "*")
        seen["special-use"] = sorted(line for line in data
                                     if re.search(rb"\\(Sent|Drafts|Trash|Junk)", line))
        c.logout()
    return seen


def mailhost_cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mailhost.cli.main", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest_twisted.inlineCallbacks
def served(config, fn):
    svc = makeService(config)
    svc.startService()
    try:
        ports = yield svc.wait_listening()
        got = yield threads.deferToThread(fn, ports["imap"][0].getHost().port)
    finally:
        yield svc.stopService()
    return got


@pytest_twisted.inlineCallbacks
def test_store_export_keeps_uids_flags_and_keywords_maildir_to_postgresql(tmp_path, pg_dsn):
    dsn = upgraded(pg_dsn)
    maildir_config = config_in(str(tmp_path / "a"))
    yield served(maildir_config, fill)
    before = yield served(maildir_config, snapshot)
    assert before["INBOX uid flags"][0].startswith(b"1 (UID 1 FLAGS (\\Seen")
    assert len(before["INBOX bodies"]) == 4 and len(before["Archive.2024 bodies"]) == 2
    assert [line.split(b" FLAGS")[0] for line in before["INBOX uid flags"]] == [
        b"1 (UID 1", b"2 (UID 3", b"3 (UID 4", b"4 (UID 6"]  # the gaps are kept
    assert b"$Label1" in before["INBOX uid flags"][2] and b"Project-X" in before["INBOX uid flags"][2]
    assert b"Archive.2024" in b"".join(before["lsub"]) and b"Junk" not in b"".join(before["lsub"])
    out = mailhost_cli("--set", f"server.data_dir={tmp_path / 'a'}", "store", "export",
                       "--to-dsn", dsn, USER)
    assert out == f"{USER}: 7 folders, 7 messages\n"
    after = yield served(pg_config(str(tmp_path / "b"), dsn), snapshot)
    assert after == before


@pytest_twisted.inlineCallbacks
def test_store_export_keeps_uids_flags_and_keywords_postgresql_to_maildir(tmp_path, pg_cluster,
                                                                         pg_dsn):
    dsn = upgraded(pg_dsn)
    pg = pg_config(str(tmp_path / "b"), dsn)
    yield served(pg, fill)
    before = yield served(pg, snapshot)
    assert len(before["INBOX bodies"]) == 4
    out = mailhost_cli("--set", f"server.data_dir={tmp_path / 'b'}",
                       "--set", "store.backend=postgresql", "--set", f"store.dsn={dsn}",
                       "store", "export", "--to-maildir", str(tmp_path / "c" / "mail"), USER)
    assert out == f"{USER}: 7 folders, 7 messages\n"
    maildir_config = config_in(str(tmp_path / "c"))
    after = yield served(maildir_config, snapshot)
    assert after == before
    # and back again, with import into a fresh database: still the same
    again = pg_config(str(tmp_path / "d"), upgraded(pg_cluster.new_database()))
    mailhost_cli("--set", f"server.data_dir={tmp_path / 'd'}", "--set", "store.backend=postgresql",
                 "--set", f"store.dsn={again.store.dsn}", "store", "import",
                 "--from-maildir", str(tmp_path / "c" / "mail"), USER)
    assert (yield served(again, snapshot)) == before


def test_store_export_refuses_an_account_that_exists(tmp_path, pg_dsn):
    dsn = upgraded(pg_dsn)
    os.makedirs(tmp_path / "mail" / "example.test" / "alice" / "cur")
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO accounts (name) VALUES (%s)", (USER,))
    done = subprocess.run([sys.executable, "-m", "mailhost.cli.main",
                           "--set", f"server.data_dir={tmp_path}",
                           "store", "export", "--to-dsn", dsn, USER],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr == f"{USER}: not copied: {USER}: the account exists in the database already\n"
