"""The PostgreSQL store's transactions: plain functions of a connection, run in a
database thread by ``Database.run`` (one transaction each).

Every write to a folder first locks the folder's row (``lock_folders``, in id order
so two transactions never wait on each other in a circle), then takes its UIDs and
its one new mod-sequence from that row, and sends ``pg_notify`` with the folder's id:
UIDs can never repeat across nodes, and commits to one folder are ordered by their
mod-sequence, which is what lets a node catch up with ``sync(since)``.
Deliveries, flag changes and expunges are batched per node (``writes.write_batch``);
COPY, MOVE and the folder operations run here, one transaction each.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import errors

from mailhost.db.notify import CHANNEL
from mailhost.store.interfaces import DEFAULT_SPECIAL_FOLDERS, FolderExists, NoSuchFolder
from mailhost.store.names import INBOX, is_inferior, parents

Conn = psycopg.Connection[Any]
#: (uid, flags, size, internal_date, recent, modseq, body hash, RFC 8474 EMAILID)
MessageRow = tuple[int, list[str], int, float, bool, int, bytes, str]
#: (name, uid_validity, uid_next, highest_modseq, special_use, mailbox_id)
FolderMeta = tuple[str, int, int, int, str | None, str]


def _notify(conn: Conn, folder_ids: Iterable[int]) -> None:
    ids = [str(i) for i in sorted(set(folder_ids))]
    if len(ids) == 1:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, ids[0]))
    elif ids:
        conn.execute("SELECT pg_notify(%s, i) FROM unnest(%s::text[]) AS i", (CHANNEL, ids))


def ensure_account(conn: Conn, user: str) -> tuple[int, bool]:
    """The account's id, made with INBOX and the special folders if new; (id, made)."""
    row = conn.execute("SELECT id FROM accounts WHERE name = %s", (user,)).fetchone()
    if row:
        return int(row[0]), False
    row = conn.execute("INSERT INTO accounts (name) VALUES (%s) ON CONFLICT (name) DO NOTHING"
                       " RETURNING id", (user,)).fetchone()
    if not row:  # another node made it meanwhile (its transaction has committed)
        again = conn.execute("SELECT id FROM accounts WHERE name = %s", (user,)).fetchone()
        assert again is not None
        return int(again[0]), False
    account_id = int(row[0])
    for name, use in [(INBOX, None), *DEFAULT_SPECIAL_FOLDERS.items()]:
        conn.execute("INSERT INTO folders (account_id, name, special_use) VALUES (%s, %s, %s)",
                     (account_id, name, use))
        conn.execute("INSERT INTO subscriptions (account_id, name) VALUES (%s, %s)",
                     (account_id, name))
    return account_id, True


def usage(conn: Conn, user: str) -> tuple[int, int]:
    """(octets, messages) stored for ``user`` (0, 0 for an account not made yet)."""
    row = conn.execute("SELECT storage, messages FROM accounts WHERE name = %s",
                       (user,)).fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def accounts(conn: Conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM accounts ORDER BY name")]


def find_folder(conn: Conn, account_id: int, name: str) -> tuple[int, int, str | None] | None:
    """(id, uid_validity, special_use) of the folder, or None."""
    row = conn.execute("SELECT id, uid_validity, special_use FROM folders"
                       " WHERE account_id = %s AND name = %s", (account_id, name)).fetchone()
    return None if row is None else (int(row[0]), int(row[1]), row[2])


def uid_validity(conn: Conn, folder_id: int) -> int | None:
    """The folder's UIDVALIDITY, or None if it is gone."""
    row = conn.execute("SELECT uid_validity FROM folders WHERE id = %s", (folder_id,)).fetchone()
    return None if row is None else int(row[0])


def lock_folders(conn: Conn, folder_ids: Iterable[int]) -> set[int]:
    """Lock these folders' rows, in id order; the ids that still exist."""
    return {int(r[0]) for r in lock_statement(conn, folder_ids).fetchall()}


def lock_statement(conn: Conn, folder_ids: Iterable[int]) -> psycopg.Cursor[Any]:
    """``lock_folders``' statement, its rows (the ids) read when the caller wants them
    (after more statements, in a pipeline)."""
    return conn.execute("SELECT id FROM folders WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                        (sorted(set(folder_ids)),))


def bump(conn: Conn, folder_id: int, uids: int = 0) -> tuple[int, int]:
    """One new mod-sequence of a locked folder and ``uids`` new UIDs: (modseq, first uid).
    The folder's NOTIFY goes in the same statement (a folder whose modseq moves has
    changed; the notification leaves only if the transaction commits): one round trip
    less while the folder's lock is held."""
    row = conn.execute("UPDATE folders SET highest_modseq = highest_modseq + 1,"
                       " uid_next = uid_next + %s WHERE id = %s"
                       " RETURNING highest_modseq, uid_next - %s, pg_notify(%s, id::text)",
                       (uids, folder_id, uids, CHANNEL)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


#: One delivery of a batch: (spool, body hash, size, [(user, folder, flags, date,
#: recent)]).
Delivery = tuple[Any, bytes, int, Sequence[tuple[str, str, list[str], float, bool]]]


def resolve_folders(conn: Conn, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Folder ids of (user, folder) pairs, accounts made as needed (one query when every
    account exists); a pair whose folder does not exist is left out."""
    users, names = zip(*sorted(pairs), strict=True) if pairs else ((), ())
    rows = conn.execute("SELECT a.name, f.name, f.id FROM accounts a"
                        " JOIN folders f ON f.account_id = a.id"
                        " JOIN unnest(%s::text[], %s::text[]) AS p(u, n)"
                        " ON a.name = p.u AND f.name = p.n", (list(users), list(names))).fetchall()
    found = {(u, n): int(i) for u, n, i in rows}
    for user, name in sorted(pairs - set(found)):
        account_id, _ = ensure_account(conn, user)
        folder = find_folder(conn, account_id, name)
        if folder is not None:
            found[(user, name)] = folder[0]
    return found


#: ``sync``'s one statement: the folder's row (kind 0), its messages changed after
#: the modseq (1, by UID), its expunges after it (2, by modseq then UID) and the
#: cached values of those messages (3), in one result of common columns.
_SYNC = (
    "SELECT 0 AS k, uid_validity AS a, uid_next AS b, highest_modseq AS c,"
    " NULL::text[] AS fl, NULL::float8 AS d, NULL::boolean AS r, NULL::bytea AS h,"
    " name AS s1, special_use AS s2, mailbox_id AS s3 FROM folders WHERE id = %(f)s"
    " UNION ALL SELECT 1, uid, size, modseq, flags, internal_date, recent, body, email_id,"
    " NULL, NULL FROM messages WHERE folder_id = %(f)s AND modseq > %(m)s"
    " UNION ALL SELECT 2, modseq, uid, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL"
    " FROM expunged WHERE folder_id = %(f)s AND modseq > %(m)s"
    " UNION ALL SELECT 3, m.uid, NULL, NULL, NULL, NULL, NULL, NULL, c.key, c.value, NULL"
    " FROM messages m JOIN body_cache c ON c.hash = m.body"
    " WHERE m.folder_id = %(f)s AND m.modseq > %(m)s"
    " ORDER BY k, a, b")


def sync(conn: Conn, folder_id: int, since: int,
         ) -> tuple[FolderMeta | None, list[MessageRow], list[tuple[int, int]],
                    list[tuple[int, str, str]]]:
    """Everything about a folder that changed after mod-sequence ``since``, in one
    snapshot: (meta or None if the folder is gone, message rows by UID, expunges by
    modseq, cached values of the new rows).

    One statement (so one snapshot, and one round trip): every write and every NOOP
    asks for a sync, and its four queries in a REPEATABLE READ transaction cost the
    node about 0.6 ms of CPU each time, this about 0.25 (measured under the load)."""
    meta: FolderMeta | None = None
    rows: list[MessageRow] = []
    gone: list[tuple[int, int]] = []
    cached: list[tuple[int, str, str]] = []
    for k, a, b, c, flags, date, recent, digest, s1, s2, s3 in conn.execute(
            _SYNC, {"f": folder_id, "m": since}):
        if k == 1:
            rows.append((int(a), list(flags), int(b), float(date), bool(recent), int(c),
                         bytes(digest), s1))
        elif k == 2:
            gone.append((int(b), int(a)))
        elif k == 3:
            cached.append((int(a), s1, s2))
        else:
            meta = (s1, int(a), int(b), int(c), s2, s3)
    if meta is None:
        return None, [], [], []
    return meta, rows, gone, cached


def save_dates(conn: Conn, folder_id: int, uids: list[int]) -> dict[int, float]:
    """RFC 8514 save dates of those of ``uids`` still in the folder."""
    rows = conn.execute("SELECT uid, saved FROM messages WHERE folder_id = %s AND uid = ANY(%s)",
                        (folder_id, uids)).fetchall()
    return {int(uid): float(saved) for uid, saved in rows}


def _remove(conn: Conn, folder_id: int, uids: list[int]) -> None:
    """Delete these messages of a locked folder as one expunge, and their bodies if no
    other message uses them."""
    if not uids:
        return
    modseq, _ = bump(conn, folder_id)
    bodies = conn.execute("DELETE FROM messages WHERE folder_id = %s AND uid = ANY(%s)"
                          " RETURNING body", (folder_id, uids)).fetchall()
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO expunged (folder_id, uid, modseq) VALUES (%s, %s, %s)"
                        " ON CONFLICT DO NOTHING", [(folder_id, u, modseq) for u in uids])
    collect_bodies(conn, {bytes(b[0]) for b in bodies})


def collect_bodies(conn: Conn, hashes: set[bytes]) -> None:
    """Delete bodies no message uses any more. A delivery that reuses one at the same
    moment holds its row lock and wins: the delete then fails its foreign-key check and
    is dropped (in a savepoint), not the expunge."""
    if not hashes:
        return
    try:
        with conn.transaction():
            conn.execute("DELETE FROM bodies b WHERE b.hash = ANY(%s) AND NOT EXISTS"
                         " (SELECT 1 FROM messages m WHERE m.body = b.hash)", (list(hashes),))
    except errors.ForeignKeyViolation:
        pass


def copy(conn: Conn, src: int, dest: int, uids: list[int], move: bool) -> list[tuple[int, int]]:
    """Copy (or move) messages with their flags, dates and EMAILIDs; [(src uid, dest uid)]."""
    alive = lock_folders(conn, [src, dest])
    if dest not in alive:
        raise NoSuchFolder("destination deleted")
    if src not in alive:
        return []
    rows = conn.execute("SELECT uid, body, size, flags, internal_date, email_id FROM messages"
                        " WHERE folder_id = %s AND uid = ANY(%s) ORDER BY uid",
                        (src, uids)).fetchall()
    if not rows:
        return []
    modseq, first = bump(conn, dest, len(rows))
    pairs = [(int(r[0]), first + i) for i, r in enumerate(rows)]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO messages (folder_id, uid, body, size, flags, internal_date,"
                        " modseq, email_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                        [(dest, new, r[1], r[2], r[3], r[4], modseq, r[5])
                         for (_, new), r in zip(pairs, rows, strict=True)])
    if move:
        _remove(conn, src, [old for old, _ in pairs])
    return pairs


def _relaxed(conn: Conn) -> None:
    """This transaction's commit does not wait for its WAL flush: for what a crash may
    lose harmlessly (a cached ENVELOPE is parsed again, a message is \\Recent again),
    so that it does not queue for the disk beside the commits that must."""
    conn.execute("SET LOCAL synchronous_commit = off")


def claim_recent(conn: Conn, folder_id: int) -> list[int]:
    _relaxed(conn)
    rows = conn.execute("UPDATE messages SET recent = false WHERE folder_id = %s AND recent"
                        " RETURNING uid", (folder_id,)).fetchall()
    return [int(r[0]) for r in rows]


def set_cached(conn: Conn, entries: Sequence[tuple[bytes, str, str]]) -> None:
    """Cache values (hash, key, value), one statement for them all: the first SEARCH
    of a big folder caches every message's header fields at once (issue 19: one
    transaction each made 20k of them). ``entries`` has each (hash, key) once, in hash
    order (two nodes' batches lock rows in one order); a body collected meanwhile is
    skipped, not an error for the whole batch."""
    _relaxed(conn)
    conn.execute("INSERT INTO body_cache (hash, key, value)"
                 " SELECT c.h, c.k, c.v FROM unnest(%s::bytea[], %s::text[], %s::text[])"
                 " AS c(h, k, v) WHERE EXISTS (SELECT 1 FROM bodies b WHERE b.hash = c.h)"
                 " ON CONFLICT (hash, key) DO UPDATE SET value = EXCLUDED.value",
                 ([h for h, _, _ in entries], [k for _, k, _ in entries],
                  [v for _, _, v in entries]))


def header_blocks(conn: Conn, hashes: Sequence[bytes]) -> dict[bytes, bytes]:
    """Each body's first chunk up to and including the empty line that ends its
    header block (the whole chunk if it has none), for many bodies in one query: only
    the header octets cross the wire. A body with no chunk (empty, or collected
    meanwhile) is absent."""
    rows = conn.execute(
        "SELECT hash, CASE WHEN p > 0 THEN substring(data FROM 1 FOR p + 3) ELSE data END"
        " FROM (SELECT hash, data, position(%s::bytea IN data) AS p FROM body_chunks"
        " WHERE hash = ANY(%s) AND seq = 0) c", (b"\r\n\r\n", list(hashes)),
        binary=True).fetchall()
    return {bytes(h): bytes(block) for h, block in rows}


def list_folders(conn: Conn, account_id: int) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM folders WHERE account_id = %s",
                                       (account_id,))]


def create_folder(conn: Conn, account_id: int, canon: str, special_use: str | None) -> None:
    conn.execute("SELECT id FROM accounts WHERE id = %s FOR UPDATE", (account_id,))
    if find_folder(conn, account_id, canon) is not None:
        raise FolderExists(canon)
    for parent in parents(canon):
        conn.execute("INSERT INTO folders (account_id, name) VALUES (%s, %s)"
                     " ON CONFLICT DO NOTHING", (account_id, parent))
    conn.execute("INSERT INTO folders (account_id, name, special_use) VALUES (%s, %s, %s)",
                 (account_id, canon, special_use))


def delete_folder(conn: Conn, account_id: int, canon: str) -> int:
    """Delete the folder and its messages; its id."""
    found = find_folder(conn, account_id, canon)
    if found is None:
        raise NoSuchFolder(canon)
    folder_id = found[0]
    lock_folders(conn, [folder_id])
    bodies = conn.execute("DELETE FROM messages WHERE folder_id = %s RETURNING body",
                          (folder_id,)).fetchall()
    conn.execute("DELETE FROM folders WHERE id = %s", (folder_id,))
    collect_bodies(conn, {bytes(b[0]) for b in bodies})
    _notify(conn, [folder_id])
    return folder_id


def rename_folder(conn: Conn, account_id: int, src: str, dst: str) -> list[tuple[int, str]]:
    """Rename ``src`` and its children to ``dst``; INBOX's messages move to a new
    ``dst`` instead (RFC 3501). The (id, new name) of every folder renamed or filled."""
    conn.execute("SELECT id FROM accounts WHERE id = %s FOR UPDATE", (account_id,))
    found = find_folder(conn, account_id, src)
    if found is None:
        raise NoSuchFolder(src)
    if find_folder(conn, account_id, dst) is not None:
        raise FolderExists(dst)
    for parent in parents(dst):
        conn.execute("INSERT INTO folders (account_id, name) VALUES (%s, %s)"
                     " ON CONFLICT DO NOTHING", (account_id, parent))
    if src == INBOX:
        row = conn.execute("INSERT INTO folders (account_id, name) VALUES (%s, %s) RETURNING id",
                           (account_id, dst)).fetchone()
        assert row is not None
        new_id = int(row[0])
        uids = [int(r[0]) for r in conn.execute(
            "SELECT uid FROM messages WHERE folder_id = %s", (found[0],))]
        copy(conn, found[0], new_id, uids, move=True)
        return [(found[0], INBOX), (new_id, dst)]
    rows = conn.execute("SELECT id, name FROM folders WHERE account_id = %s", (account_id,))
    moving = [(int(i), n) for i, n in rows if n == src or is_inferior(n, src)]
    out = []
    for folder_id, name in moving:
        new = dst + name[len(src):]
        conn.execute("UPDATE folders SET name = %s WHERE id = %s", (new, folder_id))
        out.append((folder_id, new))
    _notify(conn, [i for i, _ in out])
    return out


def subscriptions(conn: Conn, account_id: int) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM subscriptions WHERE account_id = %s",
                                       (account_id,))}


def subscribe(conn: Conn, account_id: int, name: str, on: bool) -> None:
    if on:
        conn.execute("INSERT INTO subscriptions (account_id, name) VALUES (%s, %s)"
                     " ON CONFLICT DO NOTHING", (account_id, name))
    else:
        conn.execute("DELETE FROM subscriptions WHERE account_id = %s AND name = %s",
                     (account_id, name))
