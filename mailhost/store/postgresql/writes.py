"""A node's writes to folders in one transaction: the deliveries (SMTP, APPEND), flag
changes (STORE) and expunges waiting while the one before commits (``write_batch``,
fed by ``batches.GroupCommit``).

Why: every write locks its folder's row to number its mod-sequence (and UIDs) and
holds that lock until its commit is on disk (sql.py says why the order matters). Ten
IMAP sessions doing APPEND/STORE/EXPUNGE on one folder, one transaction each, waited
for each other's lock and WAL flush in turn: ``bench/imap_load.py --postgresql``
measured 451 commands/s against Maildir's 1,349, and ``pg_stat_statements`` put the
time in the folder lock (12.6 ms mean). Deliveries already committed in batches;
now flag changes and expunges join the same batches: one lock per folder, one
``UPDATE folders`` for every folder's numbering (and its NOTIFY), one WAL flush.
Measured after (with the other cuts of that branch: one-statement syncs, no lookup
before an APPEND, kept body chunks), three runs each way, load 20-28 on 2 shared
cores: 259-307 -> 456-610 commands/s, 2.5-2.8 -> 1.03-1.10 ms CPU per command
(node and database; the database's 0.92-1.03 -> 0.31-0.34), median 18-22 -> 10-15 ms.

The lock is taken as late as it can be: bodies are written first, without it; then
the folders are locked, the rows the batch's STOREs and EXPUNGEs touch read (one
query), the operations applied in memory in the order they were submitted, and the
results written in a few statements.

Mod-sequences: each flag change or expunge that changes something gets its own new
mod-sequence, in submission order (RFC 7162 section 3.1: simultaneous STOREs from
different connections still get different mod-sequences); the batch's deliveries to
a folder come after them, with one more, shared. A STORE or EXPUNGE that changes
nothing costs no mod-sequence, as before. A folder deleted meanwhile: its STOREs do
nothing, its EXPUNGEs remove nothing, its deliveries fail with NoSuchFolder alone.

Durability: every batch waits for its WAL flush, flag changes and expunges too.
Dovecot's ``mail_fsync = optimized`` does not fsync those, and ``SET LOCAL
synchronous_commit = off`` would do the same here, but it is weaker than Dovecot's:
an asynchronous commit is lost when the database server crashes, not only when the
machine does, and with it the mod-sequences it took, which the next writes then hand
out again. A client (CONDSTORE/QRESYNC) or a node (``sync(since)``) that had seen the
lost one would then skip the new changes that reuse it. Batching already shares one
flush among everything waiting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from mailhost.db.notify import CHANNEL
from mailhost.store.flags import apply_mode
from mailhost.store.interfaces import NoSuchFolder
from mailhost.store.postgresql.bodies import store_bodies
from mailhost.store.postgresql.sql import (
    Conn,
    Delivery,
    collect_bodies,
    lock_folders,
    lock_statement,
    resolve_folders,
)

DELETED = "\\Deleted"


@dataclass(frozen=True, slots=True)
class SetFlags:
    """STORE: ``flags`` added, removed or put in place (``mode``) on ``uids``."""

    folder_id: int
    uids: Sequence[int]
    flags: frozenset[str]
    mode: str


@dataclass(frozen=True, slots=True)
class Expunge:
    """EXPUNGE: the messages flagged \\Deleted (of ``uids`` only, if given)."""

    folder_id: int
    uids: Sequence[int] | None


#: One write of a batch.
Op = Delivery | SetFlags | Expunge
#: Its result: a delivery's [(folder id, uid)] in target order, an expunge's removed
#: UIDs (ascending), None for a flag change.
Result = list[tuple[int, int]] | list[int] | None


def folders_of(op: Op, result: Result) -> list[int]:
    """The folders a successful write changed (to sync after its batch)."""
    if isinstance(op, (SetFlags, Expunge)):
        return [op.folder_id]
    assert isinstance(result, list)
    return [fid for fid, _uid in result]  # type: ignore[misc]


def _load(conn: Conn, edits: Sequence[SetFlags | Expunge]) -> psycopg.Cursor[Any]:
    """Flags of every message the edits name, and of every \\Deleted message of the
    folders an unrestricted EXPUNGE clears: one query (its rows: ``_by_folder``)."""
    wanted = sorted({(op.folder_id, uid) for op in edits if op.uids is not None
                     for uid in op.uids})
    clear_all = sorted({op.folder_id for op in edits
                        if isinstance(op, Expunge) and op.uids is None})
    return conn.execute(
        "SELECT m.folder_id, m.uid, m.flags FROM messages m"
        " JOIN unnest(%s::bigint[], %s::bigint[]) AS w(f, u)"
        " ON m.folder_id = w.f AND m.uid = w.u"
        " UNION SELECT folder_id, uid, flags FROM messages"
        " WHERE folder_id = ANY(%s::bigint[]) AND %s::text = ANY(flags)",
        ([f for f, _ in wanted], [u for _, u in wanted], clear_all, DELETED))


def _by_folder(rows: Sequence[tuple[int, int, list[str]]], folder_ids: set[int],
               ) -> dict[int, dict[int, frozenset[str]]]:
    out: dict[int, dict[int, frozenset[str]]] = {fid: {} for fid in folder_ids}
    for fid, uid, flags in rows:
        out[int(fid)][int(uid)] = frozenset(flags)
    return out


def write_batch(conn: Conn, ops: Sequence[Op]) -> list[Result | Exception]:
    """Several writes in one transaction, in order: each one's result, or NoSuchFolder
    for a delivery to a folder that does not exist (that delivery alone stores nothing).
    The round trips do not grow with the batch."""
    out: list[Result | Exception] = [None] * len(ops)
    deliveries = [(i, op) for i, op in enumerate(ops) if not isinstance(op, (SetFlags, Expunge))]
    edits = [(i, op) for i, op in enumerate(ops) if isinstance(op, (SetFlags, Expunge))]
    found = resolve_folders(conn, {(user, name) for _i, (*_, targets) in deliveries
                            for user, name, *_ in targets}) if deliveries else {}
    for i, (*_, targets) in deliveries:
        missing = [name for user, name, *_ in targets if (user, name) not in found]
        out[i] = NoSuchFolder(missing[0]) if missing else []
    live = [op for i, op in deliveries if not isinstance(out[i], Exception)]
    store_bodies(conn, [(spool, digest, size) for spool, digest, size, _t in live])
    stored = {digest for _s, digest, _z, _t in live}
    fids = {found[(u, n)] for *_, targets in live for u, n, *_ in targets}
    fids |= {op.folder_id for _i, op in edits}
    rows: dict[int, dict[int, frozenset[str]]] = {}
    if edits:
        # The lock and the read of the rows the edits touch in one round trip: the
        # read runs once the lock is held, so it sees every commit before ours.
        with conn.pipeline():
            locked = lock_statement(conn, fids)
            loaded = _load(conn, [op for _i, op in edits])
            alive = {int(r[0]) for r in locked.fetchall()}
            rows = _by_folder(loaded.fetchall(), alive & {op.folder_id for _i, op in edits})
    else:
        # Deliveries into one folder and nothing else (SMTP into one mailbox, an
        # APPEND): the numbering's UPDATE below locks it and says whether it still exists.
        alive = lock_folders(conn, fids) if len(fids) > 1 else fids

    # The edits, applied in memory in order: which flags each row ends with, which
    # rows go, and the how-manieth new mod-sequence of its folder each change takes.
    bumps: dict[int, int] = {}
    flag_writes: dict[tuple[int, int], tuple[list[str], int]] = {}
    gone: list[tuple[int, int, int]] = []
    for i, op in edits:
        current = rows.get(op.folder_id)
        if current is None:  # deleted meanwhile
            out[i] = None if isinstance(op, SetFlags) else []
            continue
        if isinstance(op, SetFlags):
            changes = [(uid, new) for uid in op.uids if (old := current.get(uid)) is not None
                       and (new := apply_mode(old, op.flags, op.mode)) != old]
            if changes:
                n = bumps[op.folder_id] = bumps.get(op.folder_id, 0) + 1
                for uid, new in changes:
                    current[uid] = new
                    flag_writes[(op.folder_id, uid)] = (sorted(new), n)
            out[i] = None
        else:
            candidates = current if op.uids is None else op.uids
            removed = sorted(u for u in candidates if DELETED in current.get(u, ()))
            if removed:
                n = bumps[op.folder_id] = bumps.get(op.folder_id, 0) + 1
                for uid in removed:
                    del current[uid]
                    flag_writes.pop((op.folder_id, uid), None)
                    gone.append((op.folder_id, uid, n))
            out[i] = removed

    counts: dict[int, int] = {}
    for i, (*_, targets) in deliveries:
        if isinstance(out[i], Exception):
            continue
        mine = [found[(u, n)] for u, n, *_ in targets]
        if not set(mine) <= alive:
            out[i] = NoSuchFolder("deleted meanwhile")  # its body may stay: collected below
            continue
        for fid in mine:
            counts[fid] = counts.get(fid, 0) + 1
    for fid in counts:
        bumps[fid] = bumps.get(fid, 0) + 1
    if not bumps:
        collect_bodies(conn, stored)
        return out
    ids = sorted(bumps)
    numbered = conn.execute(
        "UPDATE folders f SET highest_modseq = highest_modseq + c.m, uid_next = uid_next + c.n"
        " FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS c(id, m, n) WHERE f.id = c.id"
        " RETURNING f.id, f.highest_modseq, f.uid_next - c.n, pg_notify(%s, f.id::text)",
        (ids, [bumps[f] for f in ids], [counts.get(f, 0) for f in ids], CHANNEL)).fetchall()
    if len(numbered) < len(ids):  # the one folder was deleted meanwhile: nothing is placed
        for i, _op in deliveries:
            if not isinstance(out[i], Exception):
                out[i] = NoSuchFolder("deleted meanwhile")
        collect_bodies(conn, stored)
        return out
    top = {int(fid): int(m) for fid, m, _, _ in numbered}
    next_uid = {int(fid): int(u) for fid, _, u, _ in numbered}

    def modseq(fid: int, n: int) -> int:
        return top[fid] - bumps[fid] + n

    inserts = []
    for i, (_spool, digest, size, targets) in deliveries:
        placed = out[i]
        if isinstance(placed, Exception):
            continue
        assert isinstance(placed, list)
        for user, name, flags, date, recent in targets:
            fid = found[(user, name)]
            uid = next_uid[fid]
            next_uid[fid] += 1
            inserts.append((fid, uid, digest, size, flags, date, recent, top[fid]))
            placed.append((fid, uid))  # type: ignore[arg-type]
    # The writes in one round trip (a pipeline): the lock is held until the commit.
    bodies: set[bytes] = set()
    with conn.pipeline(), conn.cursor() as cur:
        deleted = None
        if gone:
            deleted = conn.execute(
                "DELETE FROM messages m USING unnest(%s::bigint[], %s::bigint[])"
                " AS g(f, u) WHERE m.folder_id = g.f AND m.uid = g.u RETURNING m.body",
                ([f for f, _u, _n in gone], [u for _f, u, _n in gone]))
            conn.execute("INSERT INTO expunged (folder_id, uid, modseq)"
                         " SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[])"
                         " ON CONFLICT DO NOTHING",
                         ([f for f, _u, _n in gone], [u for _f, u, _n in gone],
                          [modseq(f, n) for f, _u, n in gone]))
        if flag_writes:
            cur.executemany("UPDATE messages SET flags = %s, modseq = %s"
                            " WHERE folder_id = %s AND uid = %s",
                            [(flags, modseq(fid, n), fid, uid)
                             for (fid, uid), (flags, n) in sorted(flag_writes.items())])
        if inserts:
            cur.executemany("INSERT INTO messages (folder_id, uid, body, size, flags,"
                            " internal_date, recent, modseq)"
                            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", inserts)
        if deleted is not None:
            bodies = {bytes(r[0]) for r in deleted.fetchall()}
    failed = {op[1] for i, op in deliveries if isinstance(out[i], Exception)}
    collect_bodies(conn, bodies | (failed & stored))
    return out
