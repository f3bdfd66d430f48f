"""Quota on the PostgreSQL store (issue 19): the usage is the account row's count,
kept by triggers (schema 5); SMTP answers 452 4.2.2 for a full mailbox, IMAP's
GETQUOTAROOT shows the usage and an APPEND past the limit gets NO [OVERQUOTA]; an
EXPUNGE gives the room back. Real sockets: smtplib, imapclient, imaplib."""

from __future__ import annotations

import imaplib
import smtplib
import subprocess
import sys

import psycopg
import pytest_twisted
from imapclient import IMAPClient
from twisted.internet import threads

from mailhost.service import makeService
from tests.e2e.test_foreign_store import PASSWORD, USER
from tests.e2e.test_postgresql_store import pg_config, upgraded
from tests.e2e.test_quota_e2e import message


def clients(ports: dict[str, int]) -> dict[str, object]:
    seen: dict[str, object] = {}
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s:
        s.sendmail("bob@remote.test", [USER], message("one", 15_000))
        s.sendmail("bob@remote.test", [USER], message("two", 10_000))  # crosses: taken
        assert s.mail("bob@remote.test")[0] == 250
        seen["rcpt full"] = s.rcpt(USER)
    with IMAPClient("127.0.0.1", port=ports["imap"], ssl=False, timeout=30) as c:
        c.login(USER, PASSWORD)
        _, quotas = c.get_quota_root("INBOX")
        seen["quota full"] = (quotas[0].resource, quotas[0].usage, quotas[0].limit)
    with imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=30) as c:
        c.login(USER, PASSWORD)
        seen["append full"] = c.append("INBOX", None, None, message("three", 2000))
        c.select("INBOX")
        c.store("1", "+FLAGS", "(\\Deleted)")
        c.expunge()
        seen["append after expunge"] = c.append("INBOX", None, None, message("four", 2000))
        c.logout()
    with IMAPClient("127.0.0.1", port=ports["imap"], ssl=False, timeout=30) as c:
        c.login(USER, PASSWORD)
        _, quotas = c.get_quota_root("INBOX")
        seen["quota after"] = (quotas[0].usage, quotas[0].limit)
    return seen


@pytest_twisted.inlineCallbacks
def test_postgresql_store_quota_smtp_452_imap_getquota_and_overquota(tmp_path, pg_dsn):
    config = pg_config(tmp_path, upgraded(pg_dsn))
    config.store.default_quota = "20K"
    svc = makeService(config)
    svc.startService()
    try:
        ports = yield svc.wait_listening()
        seen = yield threads.deferToThread(
            clients, {kind: ports[kind][0].getHost().port for kind in ("smtp", "imap")})
    finally:
        yield svc.stopService()
    code, text = seen["rcpt full"]
    assert (code, text[:5]) == (452, b"4.2.2"), seen["rcpt full"]
    kind, usage, limit = seen["quota full"]
    assert (kind, limit) == ("STORAGE", 20) and usage >= 24, seen["quota full"]
    typ, data = seen["append full"]
    assert typ == "NO" and b"[OVERQUOTA]" in data[0], seen["append full"]
    assert seen["append after expunge"][0] == "OK", seen["append after expunge"]
    assert seen["quota after"][1] == 20 and seen["quota after"][0] < usage
    with psycopg.connect(pg_dsn) as conn:
        kept = conn.execute("SELECT storage, messages FROM accounts WHERE name = %s",
                            (USER,)).fetchone()
        counted = conn.execute("SELECT sum(m.size), count(*) FROM messages m JOIN folders f"
                               " ON f.id = m.folder_id JOIN accounts a ON a.id = f.account_id"
                               " WHERE a.name = %s", (USER,)).fetchone()
    assert kept == (counted[0], counted[1]) and kept[1] == 2
    # The admin's view: the same count.
    shown = subprocess.run([sys.executable, "-m", "mailhost.cli.main", "--set",
                            f"server.data_dir={tmp_path}", "--set", "store.backend=postgresql",
                            "--set", f"store.dsn={pg_dsn}", "--set", "store.default_quota=20K",
                            "user", "quota", USER], capture_output=True, text=True, timeout=60)
    assert shown.stdout == (f"{USER}: {kept[0]} of 20480 octets ({100 * kept[0] // 20480}%), "
                            f"limit 20K (store.default_quota), 2 messages\n"), shown.stderr
