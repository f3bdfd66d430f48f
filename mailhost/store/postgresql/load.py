"""Writing one account into PostgreSQL with given UIDs (``store import``/``export``).

The whole account is one transaction: a copy that fails leaves no half account, and
nodes see it only when it is complete. Bodies go through ``store_bodies``, so an
account whose messages are already stored (another user's copy) shares them.
Messages are written a few hundred at a time (``FLUSH_COUNT``, ``FLUSH_BYTES``).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import uuid
from collections.abc import Iterable
from typing import Any, BinaryIO

import psycopg
from zope.interface import implementer

from mailhost.db import migrations
from mailhost.store.interfaces import StoreError
from mailhost.store.postgresql.bodies import CHUNK_SIZE, SPOOL_MAX, store_bodies
from mailhost.store.transfer import IAccountLoader

_MAILBOX_ID = re.compile(r"^[0-9a-f]{32}$")
#: Messages written together at most (and octets held in memory for them).
FLUSH_COUNT = 500
FLUSH_BYTES = 8 * 1024 * 1024


@implementer(IAccountLoader)
class PostgresLoader:
    """Implements: IAccountLoader on a PostgreSQL database (one connection, one
    transaction). StoreError if the account exists there already."""

    def __init__(self, dsn: str, user: str) -> None:
        self._conn = psycopg.connect(dsn)
        try:
            migrations.check(self._conn)
            self._conn.rollback()
            row = self._conn.execute("SELECT 1 FROM accounts WHERE name = %s",
                                     (user,)).fetchone()
            if row:
                raise StoreError(f"{user}: the account exists in the database already")
            got = self._conn.execute("INSERT INTO accounts (name) VALUES (%s) RETURNING id",
                                     (user,)).fetchone()
        except BaseException:
            self._conn.close()
            raise
        assert got is not None
        self._account = int(got[0])
        self._folder = 0
        self._highest = 0
        self._max_modseq = 0
        #: Messages read but not yet written: (spool, hash, size, messages row).
        self._pending: list[tuple[Any, bytes, int, tuple[Any, ...]]] = []
        self._pending_bytes = 0

    def folder(self, name: str, uid_validity: int, uid_next: int, highest_modseq: int,
               special_use: str | None, mailbox_id: str) -> None:
        self._end_folder()
        if not _MAILBOX_ID.match(mailbox_id or ""):
            mailbox_id = uuid.uuid4().hex
        row = self._conn.execute(
            "INSERT INTO folders (account_id, name, uid_validity, uid_next, highest_modseq,"
            " special_use, mailbox_id) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (self._account, name, uid_validity, uid_next, max(highest_modseq, 1), special_use,
             mailbox_id)).fetchone()
        assert row is not None
        self._folder = int(row[0])
        self._highest = highest_modseq
        self._max_modseq = 0

    def _end_folder(self) -> None:
        self._flush()
        # HIGHESTMODSEQ is at least every message's (a store without modseqs gives 0s).
        if self._folder and self._max_modseq > self._highest:
            self._conn.execute("UPDATE folders SET highest_modseq = %s WHERE id = %s",
                               (self._max_modseq, self._folder))

    def message(self, uid: int, flags: frozenset[str], internal_date: float, modseq: int,
                body: BinaryIO) -> None:
        if not self._folder:
            raise StoreError("a message before its folder")
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX)
        try:
            digest = hashlib.sha256()
            size = 0
            while chunk := body.read(CHUNK_SIZE):
                digest.update(chunk)
                spool.write(chunk)
                size += len(chunk)
        except BaseException:
            spool.close()
            raise
        modseq = max(modseq, 1)
        self._max_modseq = max(self._max_modseq, modseq)
        self._pending.append((spool, digest.digest(), size,
                              (self._folder, uid, digest.digest(), size, sorted(flags),
                               internal_date, modseq)))
        self._pending_bytes += min(size, SPOOL_MAX)
        if len(self._pending) >= FLUSH_COUNT or self._pending_bytes >= FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        """Write the messages read so far: their bodies and rows in a few pipelined
        round trips, not three per message (a 100,000-message import took minutes of
        round trips; measured with bench/imap_load.py --postgresql)."""
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        try:
            store_bodies(self._conn, [(spool, digest, size) for spool, digest, size, _ in pending])
            with self._conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO messages (folder_id, uid, body, size, flags, internal_date,"
                    " recent, modseq) VALUES (%s, %s, %s, %s, %s, %s, false, %s)",
                    [row for *_, row in pending])
        finally:
            for spool, *_ in pending:
                spool.close()

    def finish(self, subscriptions: Iterable[str]) -> None:
        self._end_folder()
        with self._conn.cursor() as cur:
            cur.executemany("INSERT INTO subscriptions (account_id, name) VALUES (%s, %s)"
                            " ON CONFLICT DO NOTHING",
                            [(self._account, n) for n in subscriptions])
        self._conn.commit()
        self._conn.close()

    def abort(self) -> None:
        for spool, *_ in self._pending:
            spool.close()
        self._pending = []
        if not self._conn.closed:
            self._conn.rollback()
            self._conn.close()

