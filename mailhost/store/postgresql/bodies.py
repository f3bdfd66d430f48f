"""Message bodies in PostgreSQL: written once per SHA-256, read chunk by chunk.

A writer spools the CRLF-normalised bytes (memory up to ``SPOOL_MAX``, then an
anonymous temporary file) and hashes them as they come; its commit inserts the body
only if no body with that hash exists, ``CHUNK_SIZE`` octets per row, inside the
delivery's transaction. A reader holds at most one chunk.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from twisted.internet import defer
from zope.interface import implementer

from mailhost.message.crlf import CRLFNormalizer
from mailhost.store.interfaces import DeliveryTarget, IMessageWriter, StoreError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from mailhost.db.database import Database
    from mailhost.store.postgresql.store import PostgresStore

#: Octets per body_chunks row: the message reader's chunk size, so one read is one row.
CHUNK_SIZE = 256 * 1024
SPOOL_MAX = 1024 * 1024
#: Octets of chunks a node keeps of what it read or wrote last (``ChunkCache``), and
#: the largest chunk it keeps.
CACHE_BYTES = 4 * 1024 * 1024
CACHE_ITEM = 64 * 1024


class ChunkCache:
    """The small body chunks a node read or wrote last, by (hash, seq), up to
    ``CACHE_BYTES``: a body never changes once stored (its name is its SHA-256), so a
    kept chunk is never stale. Why: an IMAP client FETCHes the header and ENVELOPE of
    what was just appended or delivered, and a FETCH of a header and an ENVELOPE read
    the same chunk twice; each was a query (0.3 per command under ``bench/imap_load.py
    --postgresql``'s mix). Used from the reactor and the database threads alike."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self._max = max_bytes
        self._chunks: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, digest: bytes, seq: int) -> bytes | None:
        with self._lock:
            data = self._chunks.get((digest, seq))
            if data is not None:
                self._chunks.move_to_end((digest, seq))
            return data

    def put(self, digest: bytes, seq: int, data: bytes) -> None:
        if len(data) > CACHE_ITEM:
            return
        with self._lock:
            old = self._chunks.pop((digest, seq), None)
            if old is not None:
                self._bytes -= len(old)
            self._chunks[(digest, seq)] = data
            self._bytes += len(data)
            while self._bytes > self._max:
                _, dropped = self._chunks.popitem(last=False)
                self._bytes -= len(dropped)


def store_body(conn: psycopg.Connection[Any], spool: Any, digest: bytes, size: int) -> None:
    """Insert the body unless it is there; lock its row either way (ON CONFLICT DO
    UPDATE), so a concurrent expunge cannot delete it before our message references it."""
    row = conn.execute(
        "INSERT INTO bodies (hash, size, chunk_size) VALUES (%s, %s, %s)"
        " ON CONFLICT (hash) DO UPDATE SET size = bodies.size RETURNING (xmax = 0)",
        (digest, size, CHUNK_SIZE)).fetchone()
    if not row or not row[0]:
        return  # stored before: deduplicated
    spool.seek(0)
    seq = 0
    while chunk := spool.read(CHUNK_SIZE):
        conn.execute("INSERT INTO body_chunks (hash, seq, data) VALUES (%s, %s, %s)",
                     (digest, seq, chunk), binary=True)
        seq += 1


def store_bodies(conn: psycopg.Connection[Any], bodies: Sequence[tuple[Any, bytes, int]]) -> None:
    """``store_body`` for several (spool, hash, size) at once, in hash order (so two
    nodes' batches lock body rows in the same order): the rows of the bodies and of
    their one-chunk contents go in pipelined ``executemany`` calls, so a batch costs
    a few round trips, not a few per message. A body of more than one chunk is
    written chunk by chunk, in bounded memory, as ``store_body`` does."""
    unique: dict[bytes, tuple[Any, int]] = {}
    for spool, digest, size in bodies:
        unique.setdefault(digest, (spool, size))
    items = sorted(unique.items())
    if not items:
        return
    fresh: list[tuple[bytes, Any, int]] = []
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO bodies (hash, size, chunk_size) VALUES (%s, %s, %s)"
                        " ON CONFLICT (hash) DO UPDATE SET size = bodies.size"
                        " RETURNING (xmax = 0)",
                        [(digest, size, CHUNK_SIZE) for digest, (_, size) in items],
                        returning=True)
        for digest, (spool, size) in items:
            row = cur.fetchone()
            if row and row[0]:
                fresh.append((digest, spool, size))
            cur.nextset()
        small = []
        for digest, spool, size in fresh:
            spool.seek(0)
            if size <= CHUNK_SIZE:
                if size:  # an empty body has no chunk (store_body writes none)
                    small.append((digest, 0, spool.read()))
                continue
            seq = 0
            while chunk := spool.read(CHUNK_SIZE):
                cur.execute("INSERT INTO body_chunks (hash, seq, data) VALUES (%s, %s, %s)",
                            (digest, seq, chunk))
                seq += 1
        if small:
            cur.executemany("INSERT INTO body_chunks (hash, seq, data) VALUES (%s, %s, %s)",
                            small)


@implementer(IMessageWriter)
class PostgresMessageWriter:
    """Implements: IMessageWriter. Spools and hashes; the commit is one transaction."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._spool: tempfile.SpooledTemporaryFile[bytes] | None = \
            tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX)
        self._hash = hashlib.sha256()
        self._norm = CRLFNormalizer(keep_bare_cr=True)
        self._done = False
        self.size = 0

    def write(self, data: bytes) -> None:
        if self._done:
            raise StoreError("write after commit/abort")
        out = self._norm.feed(data)
        assert self._spool is not None
        self._spool.write(out)
        self._hash.update(out)
        self.size += len(out)

    def commit(self, targets: Sequence[DeliveryTarget]) -> defer.Deferred[list[int | None]]:
        d = self.commit_placed(targets)
        return d.addCallback(lambda placed: [uid for _, uid in placed])

    def commit_placed(self, targets: Sequence[DeliveryTarget],
                      ) -> defer.Deferred[list[tuple[int, int]]]:
        """``commit``, answering [(folder id, uid)] (PostgresAccount.append's APPENDUID)."""
        if self._done:
            return defer.fail(StoreError("commit after commit/abort"))
        self._done = True
        spool, self._spool = self._spool, None
        assert spool is not None
        if 0 < self.size <= CACHE_ITEM:  # in memory: its first reader will want it
            spool.seek(0)
            self._store.chunks.put(self._hash.digest(), 0, spool.read())
        d = self._store._deliver_placed(spool, self._hash.digest(), self.size, list(targets))

        def close(result: object) -> object:
            spool.close()
            return result

        d.addBoth(close)
        return d

    def abort(self) -> None:
        if not self._done:
            self._done = True
            if self._spool is not None:
                self._spool.close()
                self._spool = None


class BodyFile(io.RawIOBase):
    """A stored body as a blocking, seekable binary file: each read fetches the chunk
    it needs (one is kept). For threads only: every chunk is a query."""

    def __init__(self, db: Database, digest: bytes, size: int, chunk_size: int,
                 cache: ChunkCache | None = None) -> None:
        super().__init__()
        self._db = db
        self._cache = cache
        self._hash = digest
        self._size = size
        self._chunk_size = chunk_size
        self._pos = 0
        self._seq = -1
        self._chunk = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _fetch(self, seq: int) -> bytes:
        if self._cache is not None and (kept := self._cache.get(self._hash, seq)) is not None:
            return kept

        def run(conn: psycopg.Connection[Any]) -> bytes:
            row = conn.execute("SELECT data FROM body_chunks WHERE hash = %s AND seq = %s",
                               (self._hash, seq), binary=True).fetchone()
            return bytes(row[0]) if row else b""

        data = self._db.statement(run)
        if self._cache is not None and data:
            self._cache.put(self._hash, seq, data)
        return data

    def readinto(self, buffer: WriteableBuffer) -> int:
        buf = memoryview(buffer).cast("B")
        if self._pos >= self._size or not len(buf):
            return 0
        seq, within = divmod(self._pos, self._chunk_size)
        if seq != self._seq:
            self._chunk = b""
            self._chunk = self._fetch(seq)
            self._seq = seq
        data = self._chunk[within:within + len(buf)]
        if not data:
            return 0  # the body is gone (expunged by another node and collected)
        buf[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._chunk = b""
        super().close()


def open_body(db: Database, digest: bytes, size: int,
              cache: ChunkCache | None = None) -> io.BufferedReader:
    """The body as a buffered file (BufferedReader over ``BodyFile``)."""
    return io.BufferedReader(BodyFile(db, digest, size, CHUNK_SIZE, cache),
                             buffer_size=CHUNK_SIZE)
