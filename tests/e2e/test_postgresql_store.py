"""The PostgreSQL store serves SMTP, POP3 and IMAP over real sockets (issue 19).

The same clients and checks as the foreign-store test (smtplib, poplib, imaplib),
with ``[store] backend = "postgresql"`` built by ``makeService`` from the config alone,
on a private cluster. A second test proves the reactor thread never waits on the
database: every transaction and every body chunk read runs in a database thread.
"""

from __future__ import annotations

import re
import threading

import psycopg
import pytest
import pytest_twisted
from twisted.internet import threads

from mailhost.config import ConfigError
from mailhost.db import migrations
from mailhost.db.database import Database
from mailhost.service import makeService
from tests.e2e.test_foreign_store import BIG, DRAFT, SMALL, clients, config_in


def pg_config(tmp_path, dsn):
    config = config_in(str(tmp_path))
    config.store.backend = "postgresql"
    config.store.dsn = dsn
    return config


def upgraded(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        migrations.upgrade(conn)
    return dsn


@pytest_twisted.inlineCallbacks
def test_postgresql_store_serves_smtp_pop3_and_imap(tmp_path, pg_dsn):
    svc = makeService(pg_config(tmp_path, upgraded(pg_dsn)))
    svc.startService()
    try:
        ports = yield svc.wait_listening()
        seen = yield threads.deferToThread(
            clients, {kind: ports[kind][0].getHost().port for kind in ("smtp", "pop3", "imap")})
    finally:
        yield svc.stopService()

    count, _ = seen["pop3_stat"]
    assert count == 2
    assert seen["pop3_retr"][0].endswith(SMALL) and seen["pop3_retr"][1].endswith(BIG)
    assert [len(m) for m in seen["pop3_retr"]] == seen["pop3_list"]
    assert seen["pop3_top"][-3:] == [b"", b".line 000000 of a big message",
                                     b".line 000001 of a big message"]
    typ, data = seen["append"]
    assert typ == "OK" and re.search(rb"APPENDUID \d+ 1\]", data[0])
    assert seen["select"] == ("OK", [b"2"])
    typ, data = seen["fetch"]
    assert typ == "OK"
    literals = [part[1] for part in data if isinstance(part, tuple)]
    assert literals[0].endswith(SMALL) and literals[1].endswith(BIG)
    assert b"\\Seen" in data[0][0]  # RETR set it, IMAP sees it
    typ, data = seen["partial"]
    body = BIG[BIG.index(b"\r\n\r\n") + 4:]
    assert typ == "OK" and data[0][1] == body[100_000:170_000]
    assert seen["search"] == ("OK", [b"2"])
    assert seen["copy"][0] == "OK"
    assert seen["expunge"] == ("OK", [b"1"])
    assert seen["drafts"] == ("OK", [b"1"])
    typ, data = seen["draft"]
    assert typ == "OK" and data[0][1] == DRAFT and b"\\Draft" in data[0][0]
    # The expunged message's body stays: the COPY in Trash shares it.
    with psycopg.connect(pg_dsn) as conn:
        bodies = conn.execute("SELECT count(*) FROM bodies").fetchone()[0]
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    assert (messages, bodies) == (3, 3)  # INBOX: the big one; Trash: the small one; Drafts


@pytest_twisted.inlineCallbacks
def test_the_reactor_thread_never_waits_on_the_database(tmp_path, pg_dsn, monkeypatch):
    reactor_thread = threading.current_thread()
    on_reactor: list[str] = []
    transact = Database.transact

    def recording(self, fn, *args):
        if threading.current_thread() is reactor_thread:
            on_reactor.append(getattr(fn, "__name__", repr(fn)))
        return transact(self, fn, *args)

    monkeypatch.setattr(Database, "transact", recording)
    svc = makeService(pg_config(tmp_path, upgraded(pg_dsn)))
    svc.startService()
    try:
        ports = yield svc.wait_listening()
        yield threads.deferToThread(
            clients, {kind: ports[kind][0].getHost().port for kind in ("smtp", "pop3", "imap")})
    finally:
        yield svc.stopService()
    assert on_reactor == []


def test_a_node_refuses_a_schema_not_its_own_with_one_line(tmp_path, pg_cluster):
    empty = pg_cluster.new_database()
    with pytest.raises(ConfigError, match=r"^store.dsn: the database has no mailhost schema; "
                                          r"run 'mailhost db upgrade'$"):
        makeService(pg_config(tmp_path, empty))
    newer = upgraded(pg_cluster.new_database())
    with psycopg.connect(newer) as conn:
        conn.execute("INSERT INTO mailhost_schema (version) VALUES (%s)",
                     (migrations.CURRENT + 1,))
    with pytest.raises(ConfigError, match=r"is newer than this mailhost's"):
        makeService(pg_config(tmp_path, newer))
