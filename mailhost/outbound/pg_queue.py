"""The outbound queue in PostgreSQL (``[queue] backend = "postgresql"``): one queue that
every node writes to and any live node delivers from.

The seam is the spool's: ``PgSpoolFiles`` is a ``SpoolFiles`` whose durable state is
the database (schema version 4, ``db/migrations.py``), so the writer, the scheduler,
the relay client, DSNs and ``mailhost queue`` run unchanged. The queue directory of a
node only holds *working copies*: the message bytes of what this node has claimed, as
bare files (``Envelope.offset`` 0) that the relay client, local delivery and DSNs read
as they read the spool. They need no fsync (the database row is the durable copy) and
a node starting up discards them, since its claims died with its previous process.

- **Commit** (the SMTP 250): the working copy is written, then one transaction inserts
  the envelope and the bytes in ``CHUNK_SIZE`` rows, leased to this node. A failed
  transaction removes the working copy; the client gets a 4xx.
- **Claim**: every ``poll`` seconds ``QueueLeases`` takes due messages whose lease has
  expired (a dead node's, or one released at a clean stop), with
  ``FOR UPDATE SKIP LOCKED`` so two nodes never claim the same row, and writes their
  working copies in the same transaction.
- **Lease**: a node renews the leases of everything its scheduler holds every round
  (``lease`` is at least three rounds). A message whose renewal did not come back
  (deleted, or taken over after this node stalled) is dropped from the scheduler; a
  node that could not renew for half a lease drops all it holds, so a live node never
  goes on delivering what another may have claimed. A node killed mid-delivery has its
  messages delivered by another once their leases expire: at least once, the spool's
  guarantee after a crash (a recipient whose server answered 250 just before the kill
  can get a second copy).
- **Results**: envelope updates (attempts, next try, DSN state) and removal are
  updates and deletes of the row; ``next_due`` is the earliest pending recipient's
  next attempt, so a message whose node dies is claimed when it is due.
- **The database away** (restarted, failed over, unreachable): SMTP gets 451 for
  what it would queue. A result that cannot be written is kept in memory and written,
  before anything else, by the first lease round that reaches the database again (a
  message delivered while the database was away is deleted then, not delivered a
  second time). After half a lease without renewal the scheduler is paused: sessions
  finish the job they carry, none starts, since another node may claim the work once
  the leases run out. Leases count database uptime: one that expired while the
  database was down lasts until ``lease`` seconds after the database started again,
  which gives its owner that long to come back and renew it (a renewal needs only
  the row still to be its own) before another node may claim it.
- **mailhost queue**: list/show/flush/retry/delete read and change the rows; requests
  for running nodes go to ``queue_requests``, which every node reads each second.

The lease clock is the database's (``clock_timestamp()``), so nodes need not agree on
the time for leases; ``next_due`` is a node's clock, as the spool's envelopes are.
"""

from __future__ import annotations

import io
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

import psycopg
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mailhost.db.database import Database, DatabaseUnavailable
from mailhost.outbound.envelope import PENDING, Envelope
from mailhost.outbound.spool import SpoolFiles, header_block

log = Logger()

#: Octets per queue_chunks row (the store's body chunk size).
CHUNK_SIZE = 256 * 1024
#: Messages claimed per round, and held by one node at most (the rest waits for a
#: node with room, so a node that starts late gets its share).
CLAIM_BATCH = 200
HOLD_MAX = 2000
#: ``queue_requests`` rows older than this (seconds) are deleted.
REQUEST_KEEP = 3600.0
#: Seconds between two counts of the whole queue (the metrics' gauges).
STATS_EVERY = 5.0
#: After the database failed a commit or a result, the queue's other operations fail
#: (commits: 451) or are kept (results) at once for this long, rather than each
#: waiting the pool's timeout in turn (a batch runs its operations one by one).
FAIL_FAST = 2.0

_NOW = "extract(epoch FROM clock_timestamp())"
#: A lease is claimable once it ended and the database has been up for a lease's
#: length (the owner's grace after a database restart); a released one at once.
_CLAIMABLE = ("(lease_owner IS NULL OR greatest(lease_until,"
              f" extract(epoch FROM pg_postmaster_start_time()) + %s) < {_NOW})")

#: A result not yet written: the envelope's JSON and next_due, or None for a removal.
Result = tuple[str, float] | None


def check_schema(dsn: str) -> None:
    """Refuse to start (ConfigError, one line naming ``queue.dsn``) on a database that is
    unreachable or whose schema is not this code's (migrations.require_current)."""
    from mailhost.db import migrations

    migrations.require_current(dsn, "queue.dsn")


def next_due(env: Envelope) -> float:
    """When ``env`` next needs a node: its earliest pending recipient's next attempt."""
    times = [r.next_attempt for r in env.recipients if r.status == PENDING]
    return min(times) if times else 0.0


def node_name() -> str:
    """This process's lease owner: host, pid and a random part, so a restarted node
    never mistakes its dead predecessor's claims for its own."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class PgSpoolFiles(SpoolFiles):
    """The spool's operations on the PostgreSQL queue; see the module docstring.

    ``root`` holds the working copies. Blocking methods (``*_sync`` and the ``_op``s
    the batches run) run in threads or the CLI, as ``SpoolFiles``'s do.
    """

    def __init__(self, root: str, db: Database, lease: float = 60.0, reactor: Any = None,
                 node: str | None = None) -> None:
        super().__init__(root, fsync=False, reactor=reactor)
        self.db = db
        self.lease = lease
        self.node = node or node_name()
        self._request_seq: int | None = None
        # Results the database was away for (qid -> Result), written by the next
        # renewal that reaches it; the newest result of a message replaces older ones.
        self._unsaved: dict[str, Result] = {}
        # Results asked for and not yet written or kept (qid -> how many): the
        # scheduler has let go of a removed message before its row is deleted.
        self._writing: dict[str, int] = {}
        self._unsaved_lock = threading.Lock()
        self._failed_at = -FAIL_FAST  # time.monotonic() of the last DatabaseUnavailable

    # Commit, update, removal (thread side, from the spool's batches).

    def _commit_op(self, tmp_path: str, envelope: Envelope,
                   data: bytes | None) -> tuple[str, tuple[str, ...]]:
        envelope.offset = 0
        path = self.message_path(envelope.id)
        if data is not None:
            with open(tmp_path, "wb") as f:
                f.write(data)
        os.replace(tmp_path, path)
        try:
            self._transact(self._insert, envelope, path)
        except BaseException:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            raise
        return envelope.id, ()

    def _insert(self, conn: psycopg.Connection[Any], env: Envelope, path: str) -> None:
        conn.execute(
            "INSERT INTO queue (id, envelope, next_due, lease_owner, lease_until)"
            f" VALUES (%s, %s, %s, %s, {_NOW} + %s)",
            (env.id, env.to_json().decode(), next_due(env), self.node, self.lease))
        with open(path, "rb") as f:
            seq = 0
            while chunk := f.read(CHUNK_SIZE):
                conn.execute("INSERT INTO queue_chunks (id, seq, data) VALUES (%s, %s, %s)",
                             (env.id, seq, chunk), binary=True)
                seq += 1

    def save_envelope(self, envelope: Envelope) -> defer.Deferred:
        self._note_writing(envelope.id)
        return self.run_batch(self._update_op, envelope.id, envelope.to_json(),
                              next_due(envelope))

    def remove(self, qid: str) -> defer.Deferred:
        self._note_writing(qid)
        return self.run_batch(self._remove_op, qid)

    def _note_writing(self, qid: str) -> None:
        with self._unsaved_lock:
            self._writing[qid] = self._writing.get(qid, 0) + 1

    def in_hand(self) -> set[str]:
        """Messages whose results this node has yet to write (being written, or kept
        while the database is away): still this node's work, though the scheduler
        holds them no more."""
        with self._unsaved_lock:
            return set(self._writing) | set(self._unsaved)

    def save_envelope_sync(self, envelope: Envelope) -> None:
        self._note_writing(envelope.id)
        self._update_op(envelope.id, envelope.to_json(), next_due(envelope))

    def _update_op(self, qid: str, raw: bytes, due: float) -> tuple[None, tuple[str, ...]]:
        self._write_result(qid, (raw.decode(), due))
        return None, ()

    def _remove_op(self, qid: str) -> tuple[None, tuple[str, ...]]:
        self._write_result(qid, None)
        self.drop_copy(qid)
        return None, ()

    def _write_result(self, qid: str, result: Result) -> None:
        """Write one result now, or keep it for the next renewal if the database is
        away (or an older result of ``qid`` still waits: they go in order)."""
        try:
            with self._unsaved_lock:
                if qid in self._unsaved:
                    self._unsaved[qid] = result
                    return
            try:
                self._transact(self._apply, [(qid, result)], False)
            except DatabaseUnavailable as e:
                with self._unsaved_lock:
                    first = not self._unsaved
                    self._unsaved[qid] = result
                if first:
                    log.warn("outbound queue: results kept until the database returns ({e})",
                             e=e, event="queue_results_kept")
        finally:
            with self._unsaved_lock:
                left = self._writing.get(qid, 1) - 1
                if left > 0:
                    self._writing[qid] = left
                else:
                    self._writing.pop(qid, None)

    def _transact(self, fn: Any, *args: Any) -> None:
        """``db.transact`` for commits and results, failing at once for ``FAIL_FAST``
        seconds after the database failed one."""
        if time.monotonic() - self._failed_at < FAIL_FAST:
            raise DatabaseUnavailable("database unavailable (it failed the queue just now)")
        try:
            self.db.transact(fn, *args)
        except DatabaseUnavailable:
            self._failed_at = time.monotonic()
            raise

    def _apply(self, conn: psycopg.Connection[Any], results: Iterable[tuple[str, Result]],
               kept: bool) -> None:
        """Write ``results``; a ``kept`` update only if the row is still this node's
        (another may have claimed it while the database was away from us; a removal is
        made anyway: the message was delivered, or an operator deleted it)."""
        for qid, result in results:
            if result is None:
                conn.execute("DELETE FROM queue WHERE id = %s", (qid,))
            elif kept:
                conn.execute("UPDATE queue SET envelope = %s, next_due = %s"
                             " WHERE id = %s AND lease_owner = %s",
                             (result[0], result[1], qid, self.node))
            else:
                conn.execute("UPDATE queue SET envelope = %s, next_due = %s WHERE id = %s",
                             (result[0], result[1], qid))

    def unsaved(self) -> int:
        """How many results wait for the database."""
        with self._unsaved_lock:
            return len(self._unsaved)

    def drop_copy(self, qid: str) -> None:
        """Remove this node's working copy of ``qid`` (blocking, but one unlink)."""
        for path in (self.message_path(qid), self.envelope_path(qid)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # Loading and reading.

    def load_all_sync(self) -> tuple[list[Envelope], list[str]]:
        """Nothing is loaded at start: ``QueueLeases`` claims work. The working copies of
        a previous process are stale (its leases died with it) and are removed, but not
        a young file: SMTP may be committing a message right now (a stale copy left
        is harmless, a claim rewrites it); files in ``tmp/`` go after an hour, as in
        the spool (a large message streams there while it arrives)."""
        self.ensure_sync()
        now = time.time()
        for d, age in ((self.msg_dir, 60.0), (self.env_dir, 60.0), (self.free_dir, 0.0),
                       (self.tmp_dir, 3600.0)):
            for name in os.listdir(d):
                path = os.path.join(d, name)
                try:
                    if os.stat(path).st_mtime < now - age:
                        os.unlink(path)
                except OSError:
                    pass
        return [], []

    def load_envelope_sync(self, qid: str) -> Envelope | None:
        def select(conn: psycopg.Connection[Any]) -> Any:
            return conn.execute("SELECT envelope FROM queue WHERE id = %s", (qid,)).fetchone()

        row = self.db.transact(select)
        return None if row is None else Envelope.from_json(row[0].encode())

    def iter_sync(self) -> list[tuple[str, Envelope | Exception]]:
        def select(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute("SELECT id, envelope FROM queue ORDER BY id").fetchall()

        out: list[tuple[str, Envelope | Exception]] = []
        for qid, raw in self.db.transact(select):
            try:
                out.append((qid, Envelope.from_json(raw.encode())))
            except (ValueError, TypeError, KeyError) as e:
                out.append((qid, e))
        return out

    def headers_sync(self, env: Envelope, limit: int = 256 * 1024) -> bytes:
        def select(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(
                "SELECT data FROM queue_chunks WHERE id = %s AND seq < %s ORDER BY seq",
                (env.id, limit // CHUNK_SIZE + 1), binary=True).fetchall()

        data = b"".join(bytes(row[0]) for row in self.db.transact(select))
        return header_block(io.BytesIO(data), limit)

    def export_legacy_sync(self) -> tuple[int, list[str]]:
        return 0, ["the queue is in PostgreSQL (queue.backend): there is no spool to rewrite"]

    # Leases (thread side, from QueueLeases).

    def renew_sync(self, held: list[str]) -> tuple[set[str], set[str]]:
        """Write the results kept while the database was away, then extend this node's
        leases on ``held``: the ids still ours, and those another node holds now (the
        rest were deleted: delivered, or ``mailhost queue delete``)."""
        with self._unsaved_lock:
            pending = dict(self._unsaved)
            writing = sorted(self._writing)

        def renew(conn: psycopg.Connection[Any]) -> tuple[set[str], set[str]]:
            self._apply(conn, pending.items(), True)
            if writing:  # no other node takes a message while its result is on the way
                conn.execute(f"UPDATE queue SET lease_until = {_NOW} + %s"
                             " WHERE lease_owner = %s AND id = ANY(%s)",
                             (self.lease, self.node, writing))
            if not held:
                return set(), set()
            kept = {row[0] for row in conn.execute(
                f"UPDATE queue SET lease_until = {_NOW} + %s"
                " WHERE lease_owner = %s AND id = ANY(%s) RETURNING id",
                (self.lease, self.node, held)).fetchall()}
            lost = [qid for qid in held if qid not in kept]
            taken = {row[0] for row in conn.execute(
                "SELECT id FROM queue WHERE id = ANY(%s)", (lost,)).fetchall()} if lost else set()
            return kept, taken

        if not (held or pending or writing):
            return set(), set()
        out = self.db.transact(renew)
        if pending:
            with self._unsaved_lock:
                for qid, result in pending.items():
                    if qid in self._unsaved and self._unsaved[qid] is result:
                        del self._unsaved[qid]
            log.info("outbound queue: {n} results kept while the database was away written",
                     n=len(pending), event="queue_results_written")
        return out

    def claim_sync(self, limit: int) -> list[Envelope]:
        """Claim up to ``limit`` due messages nobody holds, and write their working
        copies, in one transaction (a failed copy claims nothing)."""
        def claim(conn: psycopg.Connection[Any]) -> list[Envelope]:
            rows = conn.execute(
                f"UPDATE queue SET lease_owner = %s, lease_until = {_NOW} + %s"
                " WHERE id IN (SELECT id FROM queue"
                f"  WHERE next_due <= %s AND {_CLAIMABLE}"
                "  ORDER BY next_due LIMIT %s FOR UPDATE SKIP LOCKED)"
                " RETURNING id, envelope",
                (self.node, self.lease, time.time(), self.lease, limit)).fetchall()
            out = []
            for qid, raw in rows:
                env = Envelope.from_json(raw.encode())
                env.offset = 0
                self._write_copy(conn, qid)
                out.append(env)
            return out

        return self.db.transact(claim) if limit > 0 else []

    def _write_copy(self, conn: psycopg.Connection[Any], qid: str) -> None:
        tmp = os.path.join(self.tmp_dir, f"{qid}.claim")
        cur = conn.cursor(binary=True)
        with open(tmp, "wb") as f:
            seq = 0
            while True:  # one chunk in memory at a time
                row = cur.execute("SELECT data FROM queue_chunks WHERE id = %s AND seq = %s",
                                  (qid, seq)).fetchone()
                if row is None:
                    break
                f.write(row[0])
                seq += 1
        os.replace(tmp, self.message_path(qid))

    def stats_sync(self) -> tuple[int, float | None]:
        """The whole shared queue: how many messages, and when the oldest arrived (its
        id begins with its arrival in hex milliseconds, ``new_queue_id``; None when
        the queue is empty). One index read, whatever the queue's size."""
        def count(conn: psycopg.Connection[Any]) -> tuple[int, str | None]:
            row = conn.execute("SELECT count(*), min(id) FROM queue").fetchone()
            return (int(row[0]), row[1]) if row else (0, None)

        n, oldest = self.db.transact(count)
        try:
            arrival = int(oldest[:11], 16) / 1000 if oldest else None
        except ValueError:
            arrival = None
        return n, arrival

    def release_all_sync(self) -> int:
        """A clean stop: this node's leases end now, so another node takes the work
        (after the results kept while the database was away, if any)."""
        self.renew_sync([])
        def release(conn: psycopg.Connection[Any]) -> int:
            return conn.execute("UPDATE queue SET lease_owner = NULL, lease_until = 0"
                                " WHERE lease_owner = %s", (self.node,)).rowcount

        return self.db.transact(release)

    # Requests from `mailhost queue` to running nodes.

    def add_trigger_sync(self, action: str, qid: str | None = None) -> None:
        def insert(conn: psycopg.Connection[Any]) -> None:
            conn.execute("INSERT INTO queue_requests (action, qid) VALUES (%s, %s)",
                         (action, qid))

        self.db.transact(insert)

    def has_triggers_sync(self) -> bool:
        """Always worth a look: the look itself is a query, made in a thread."""
        return True

    def take_triggers_sync(self) -> list[dict[str, Any]]:
        """Requests made since the last look (the first look only notes where they are:
        requests made while this node was down were applied to the rows already)."""
        def take(conn: psycopg.Connection[Any]) -> list[Any]:
            if self._request_seq is None:
                row = conn.execute("SELECT coalesce(max(seq), 0) FROM queue_requests").fetchone()
                self._request_seq = int(row[0]) if row else 0
                conn.execute(f"DELETE FROM queue_requests WHERE made < {_NOW} - %s",
                             (REQUEST_KEEP,))
                return []
            return conn.execute("SELECT seq, action, qid FROM queue_requests WHERE seq > %s"
                                " ORDER BY seq", (self._request_seq,)).fetchall()

        try:
            rows = self.db.transact(take)
        except DatabaseUnavailable:
            return []  # the lease round says so, once; requests wait in the table
        if rows:
            self._request_seq = int(rows[-1][0])
        return [{"action": action, "id": qid} for _seq, action, qid in rows]


class QueueLeases:
    """Claims work for one node's scheduler and keeps its leases (see the module
    docstring). ``scheduler`` needs ``envelopes`` (id to Envelope) and ``add``."""

    def __init__(self, files: PgSpoolFiles, scheduler: Any, reactor: Any,
                 poll: float = 1.0) -> None:
        self.files = files
        self.scheduler = scheduler
        self.reactor = reactor
        self.poll = poll
        self._loop: LoopingCall | None = None
        self._round_d: defer.Deferred | None = None
        self._renewed = reactor.seconds()
        self._failing = False
        #: The whole queue (count, oldest arrival), as of the last count; None before.
        self.shared: tuple[int, float | None] | None = None
        self._counted = -STATS_EVERY

    def start(self) -> None:
        self._renewed = self.reactor.seconds()
        self._loop = LoopingCall(self._start_round)
        self._loop.clock = self.reactor
        self._loop.start(self.poll, now=True)

    def _start_round(self) -> None:
        if self._round_d is not None:
            return  # the last round is still running (a slow database)
        d = defer.ensureDeferred(self._round())
        self._round_d = d
        d.addErrback(self._round_failed)

        def done(_: object) -> None:
            self._round_d = None

        d.addBoth(done)

    def _round_failed(self, f: Any) -> None:
        """One line when rounds start failing (not one per round while the database is
        away); held work pauses after half a lease without renewal."""
        if not self._failing:
            self._failing = True
            log.warn("outbound queue: lease round failed: {e}", e=f.getErrorMessage(),
                     event="queue_lease_failed")
        if (self.reactor.seconds() - self._renewed > self.files.lease / 2
                and not self.scheduler.paused):
            log.warn("outbound queue: leases not renewed for {t:.0f}s: no new deliveries"
                     " until the database answers", t=self.reactor.seconds() - self._renewed,
                     event="queue_paused")
            self.scheduler.set_paused(True)

    async def _round(self) -> None:
        db = self.files.db
        held = list(self.scheduler.envelopes)
        kept, taken = await db.hop(self.files.renew_sync, held)
        self._renewed = self.reactor.seconds()
        if self._failing:
            self._failing = False
            log.info("outbound queue: the database answers again; leases renewed",
                     event="queue_lease_renewed")
        self._forget(taken, "its lease was taken over by another node")
        self._forget([qid for qid in held if qid not in kept and qid not in taken],
                     "deleted from the queue", quiet=True)
        if self.scheduler.paused:
            self.scheduler.set_paused(False)
        if self.reactor.seconds() - self._counted >= STATS_EVERY:
            self._counted = self.reactor.seconds()
            self.shared = await db.hop(self.files.stats_sync)
        room = min(CLAIM_BATCH, HOLD_MAX - len(self.scheduler.envelopes))
        if room <= 0 or not self.scheduler.running:
            return
        claimed = await db.hop(self.files.claim_sync, room)
        in_hand = self.files.in_hand()
        for env in claimed:
            # Ours already (its lease ran out while the database was away): the result
            # on its way decides, not a second delivery.
            if env.id in in_hand and env.id not in self.scheduler.envelopes:
                self.files.drop_copy(env.id)
            elif env.id not in self.scheduler.envelopes:
                self.scheduler.add(env)
        if claimed:
            log.info("outbound queue: claimed {n} messages", n=len(claimed))

    def _forget(self, qids: Iterable[str], why: str, quiet: bool = False) -> None:
        """Stop working on ``qids``: they are gone, or another node may hold them now."""
        for qid in list(qids):
            if self.scheduler.envelopes.pop(qid, None) is not None:
                if quiet:
                    log.info("outbound queue: {qid} dropped ({why})", qid=qid, why=why)
                else:
                    log.warn("outbound queue: {qid} dropped ({why})", qid=qid, why=why)
                self.files.drop_copy(qid)

    async def stop(self) -> None:
        """Stop claiming; then (after the scheduler stopped) ``release``."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._round_d is not None:
            await self._round_d

    async def release(self) -> None:
        """End this node's leases, so the others take its messages at once."""
        try:
            n = await self.files.db.hop(self.files.release_all_sync)
        except Exception as e:
            log.warn("outbound queue: leases not released ({e}); they expire", e=e)
            return
        if n:
            log.info("outbound queue: released {n} messages to other nodes", n=n)
