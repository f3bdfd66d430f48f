"""The database goes away under a running node (issue 19): every client gets a temporary
error, never a 250 or an OK for something not committed, and the node recovers by
itself when the database returns.

SMTP answers ``451 4.3.0`` at the end of DATA, IMAP ``NO [UNAVAILABLE]``, POP3
``-ERR [SYS/TEMP]``; the message refused while the database was down is not in the
mailbox afterwards, the one sent after it is. A private cluster, since this test stops it.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import time

import psycopg
import pytest
import pytest_twisted
from twisted.internet import threads

from mailhost.db import migrations
from mailhost.service import makeService
from tests.e2e.test_foreign_store import PASSWORD, USER, config_in
from tests.pg_cluster import PgCluster


def message(subject: str) -> bytes:
    return (f"From: bob@remote.test\r\nTo: {USER}\r\nSubject: {subject}\r\n\r\n"
            f"{subject}\r\n").encode()


@pytest.fixture
def cluster():
    c = PgCluster().start()
    yield c
    c.stop()


def sessions(ports: dict[str, int], cluster: PgCluster) -> dict[str, object]:
    seen: dict[str, object] = {}
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=60) as s:
        s.sendmail("bob@remote.test", [USER], message("before"))
    imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=60)
    imap.login(USER, PASSWORD)
    imap.select("INBOX")

    cluster.halt()
    try:
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=60) as s:
            s.ehlo()
            s.mail("bob@remote.test")
            s.rcpt(USER)
            try:
                seen["smtp_down"] = s.data(message("while down"))
            except smtplib.SMTPDataError as e:
                seen["smtp_down"] = (e.smtp_code, e.smtp_error)
        seen["imap_store_down"] = imap.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
        p = poplib.POP3("127.0.0.1", ports["pop3"], timeout=60)
        p.user(USER)
        try:
            p.pass_(PASSWORD)
            seen["pop3_down"] = b"+OK"
        except poplib.error_proto as e:
            seen["pop3_down"] = e.args[0]
        p.close()
    finally:
        cluster.resume()

    # The pool reconnects with a backoff: a sender retries a 451, as any MTA would.
    deadline = time.monotonic() + 60
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=60) as s:
                s.sendmail("bob@remote.test", [USER], message("after"))
            break
        except smtplib.SMTPDataError as e:
            if e.smtp_code != 451 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    # The same IMAP session goes on: the node found the database again by itself (its
    # LISTEN connection comes back and resynchronises the open folder; NOOP polls).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        imap.noop()
        _, exists = imap.response("EXISTS")
        if exists and exists[-1] not in (None, b"1"):
            break
        time.sleep(0.25)
    seen["imap_after"] = imap.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    imap.logout()
    return seen


@pytest_twisted.inlineCallbacks
def test_database_down_gives_temporary_errors_and_the_node_recovers(tmp_path, cluster):
    dsn = cluster.new_database()
    with psycopg.connect(dsn) as conn:
        migrations.upgrade(conn)
    config = config_in(str(tmp_path))
    config.store.backend = "postgresql"
    config.store.dsn = dsn
    svc = makeService(config)
    svc.startService()
    try:
        ports = yield svc.wait_listening()
        seen = yield threads.deferToThread(
            sessions, {k: ports[k][0].getHost().port for k in ("smtp", "pop3", "imap")}, cluster)
    finally:
        yield svc.stopService()

    code, text = seen["smtp_down"]
    assert (code, text) == (451, b"4.3.0 Error: mail storage is unavailable, try again later")
    typ, data = seen["imap_store_down"]
    assert typ == "NO" and data[0].startswith(b"[UNAVAILABLE]"), seen["imap_store_down"]
    assert seen["pop3_down"].startswith(b"-ERR [SYS/TEMP]"), seen["pop3_down"]
    typ, data = seen["imap_after"]
    assert typ == "OK"
    subjects = [part[1].strip() for part in data if isinstance(part, tuple)]
    assert subjects == [b"Subject: before", b"Subject: after"], data
