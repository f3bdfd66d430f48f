"""The first header SEARCH on a big PostgreSQL folder costs a few queries, not one per
message (issue 19: ``bench/imap_load.py --postgresql``, 20k messages, 47 s against
Maildir's 5.6 s: every header was one query and every cache entry one transaction).

A real node (``makeService``, ``[store] backend = "postgresql"``) and imaplib; the
messages are written by the store's own loader (``mailhost store import``'s), and
every transaction the node runs during the command is counted.
"""

from __future__ import annotations

import imaplib
import io
import time

import psycopg
import pytest_twisted
from twisted.internet import threads

from mailhost.db.database import Database
from mailhost.imap.headerindex import BULK
from mailhost.service import makeService
from mailhost.store.postgresql.load import PostgresLoader
from tests.e2e.test_foreign_store import PASSWORD, USER
from tests.e2e.test_postgresql_store import pg_config, upgraded

#: Messages in the folder: more than two ``BULK`` batches.
N = 2 * BULK + 500


def _load(dsn: str) -> None:
    loader = PostgresLoader(dsn, USER)
    loader.folder("INBOX", 4242, N + 1, 1, None, "")
    for uid in range(1, N + 1):
        loader.message(uid, frozenset(), 1e9 + uid, 1, io.BytesIO(
            b"From: sender%d@example.test\r\nTo: alice@example.test\r\n"
            b"Subject: bench %d\r\n\r\nbody %d\r\n" % (uid % 7, uid, uid)))
    loader.finish(["INBOX"])


def _cached(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM body_cache").fetchone()
        return int(row[0]) if row else 0


@pytest_twisted.inlineCallbacks
def test_first_search_subject_on_a_big_folder_reads_headers_in_bulk(tmp_path, pg_dsn,
                                                                    monkeypatch):
    dsn = upgraded(pg_dsn)
    _load(dsn)
    during: list[str] = []
    everything: list[str] = []
    counting = [False]
    def recorder(real):
        def recording(self, fn, *args):
            name = getattr(fn, "__name__", repr(fn))
            everything.append(name)
            if counting[0]:
                during.append(name)
            return real(self, fn, *args)
        return recording

    # Every transaction: those of several statements and those of one.
    monkeypatch.setattr(Database, "transact", recorder(Database.transact))
    monkeypatch.setattr(Database, "statement", recorder(Database.statement))
    svc = makeService(pg_config(tmp_path, dsn))
    svc.startService()
    try:
        ports = yield svc.wait_listening()

        def search() -> tuple[list[bytes], list[bytes], list[bytes]]:
            m = imaplib.IMAP4("127.0.0.1", ports["imap"][0].getHost().port, timeout=120)
            m.login(USER, PASSWORD)
            m.select("INBOX")
            counting[0] = True
            first = m.uid("SEARCH", "SUBJECT", '"bench 1234"')[1]
            counting[0] = False
            again = m.uid("SEARCH", "SUBJECT", '"bench 123"')[1]
            sort = m.uid("SORT", "(FROM)", "UTF-8", "SUBJECT", '"bench 12"')[1]
            m.logout()
            return first, again, sort

        first, again, sort = yield threads.deferToThread(search)
        # The cache entries are written behind the answer; the node stops after them.
        deadline = time.monotonic() + 30
        while _cached(dsn) < N and time.monotonic() < deadline:
            yield threads.deferToThread(time.sleep, 0.1)
    finally:
        yield svc.stopService()
    assert first == [b"1234"]
    assert again == [b" ".join(b"%d" % u for u in [123, *range(1230, 1240)])]
    # SORT (FROM) over the same table: by sender number (uid % 7), then by UID.
    twelves = [12, *range(120, 130), *range(1200, 1300)]
    assert sort == [b" ".join(b"%d" % u for u in sorted(twelves, key=lambda u: (u % 7, u)))]
    assert _cached(dsn) == N
    # Three header queries (BULK bodies each) and a few cache writes, not 2 * N.
    assert during.count("header_blocks") == 3, during
    assert len(during) <= 12, during
    assert everything.count("header_blocks") == 3, everything
    assert 1 <= everything.count("set_cached") <= 6, everything
