"""PostgresStore: the store contract on PostgreSQL, for several nodes on one database.

The contract answers message lists, flags and modseqs synchronously, from an index.
Here each open folder keeps that index in memory and brings it up to date with one
query, ``sql.sync(since)``: "every message whose modseq is above the highest I know,
and every expunge since". Every change goes through it, ours and other nodes' alike:
after our own write commits, the folder syncs before the write's Deferred fires (so
the caller sees its change, and listeners hear of it, at once), and a ``NOTIFY`` from
any node makes the folder sync again (IDLE on node B hears of a delivery on node A).
Syncs of one folder run one at a time, and since writes to a folder are ordered by
its mod-sequence (sql.py), nothing is ever skipped.

Quota usage is each account row's running count, kept by triggers on ``messages``
(schema 5), so every node's every write counts in its own transaction.

The \\Recent flag: a claim takes effect on this node at once and in the database by one UPDATE;
sessions on two nodes that claim in the same instant can both see a message as recent.
A rename seen from another node renames its live folder only when that folder next syncs.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from typing import Any, BinaryIO, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhost.db import migrations
from mailhost.db.database import Database
from mailhost.db.notify import NotifyListener
from mailhost.store.append import append_message
from mailhost.store.flags import normalize_flags
from mailhost.store.interfaces import (
    Columns,
    DeliveryTarget,
    IAccountListener,
    IAccountListing,
    IFolder,
    IFolderListener,
    IHeaderBlocks,
    IIndexedFolder,
    IMailAccount,
    IMailStore,
    IMessageReader,
    IMessageWriter,
    InvalidFolderName,
    MessageInfo,
    NoSuchFolder,
    NoSuchMessage,
    StoreError,
    StoreUnavailable,
)
from mailhost.store.listeners import AccountListenerSet, ListenerSet
from mailhost.store.modseq import ModSeqs
from mailhost.store.names import INBOX, canonical_folder, is_inferior, split_user
from mailhost.store.objectid import EMAIL_ID_KEY
from mailhost.store.postgresql import sql, writes
from mailhost.store.postgresql.batches import GroupCommit
from mailhost.store.postgresql.bodies import ChunkCache, PostgresMessageWriter, open_body
from mailhost.store.postgresql.sql import FolderMeta, MessageRow
from mailhost.store.postgresql.writes import Expunge, SetFlags
from mailhost.store.quota import IQuotaRoot, IQuotaStore, QuotaLimits, QuotaUsage
from mailhost.store.reader import INLINE_READ, range_length, reader_for

log = Logger()
_T = TypeVar("_T")

#: Bodies whose header blocks one query reads (``read_headers``).
HEADER_QUERY = 1000
#: Cached values written in one statement at most (``set_cached``).
CACHE_BATCH = 2000


def _guard(fn: Callable[[], defer.Deferred[_T]]) -> defer.Deferred[_T]:
    """``fn()``, with a StoreError it raises at once as a failed Deferred."""
    try:
        return fn()
    except StoreError:
        return defer.fail()


def _warn_refresh(failure: Failure, after: str) -> None:
    """A refresh failed after a write committed: one warning line, not an error."""
    e = failure.value
    why = (e.subFailure.getErrorMessage() if isinstance(e, defer.FirstError)
           else failure.getErrorMessage())
    log.warn("folder refresh after a {after} failed: {e}", after=after, e=why, event="pg_sync")


@implementer(IIndexedFolder, IHeaderBlocks)
class PostgresFolder:
    """Implements: IIndexedFolder and IHeaderBlocks. One live object per folder (by
    database id) in a store. ``columns()`` is built from the index once per change and
    kept until the next one, so repeated SELECTs and ``FETCH 1:* (FLAGS)`` of a big
    folder build no MessageInfo list; every date is in the index already
    (``fill_dates`` is a no-op).

    The first SORT or SEARCH on header fields reads every message's header: through
    ``read_headers``, a thousand bodies' header octets per query, and its cache entries
    go back a few thousand per statement (``set_cached``), not one transaction each
    (issue 19: 47 s for 20k messages, against Maildir's 5.6 s)."""

    def __init__(self, store: PostgresStore, folder_id: int, name: str, uid_validity: int,
                 special_use: str | None, account_id: int = 0) -> None:
        self._store = store
        self.id = folder_id
        self.account_id = account_id
        self.name = name
        self.uid_validity = uid_validity
        self.uid_next = 1
        self.special_use = special_use
        self.mailbox_id = ""  # RFC 8474; read with the folder's first sync
        self.deleted = False
        self._infos: dict[int, MessageInfo] = {}
        self._hashes: dict[int, bytes] = {}
        self._email_ids: dict[int, str] = {}  # RFC 8474, a column: COPY/MOVE carry it
        self._cache: dict[int, dict[str, str]] = {}
        self._modseqs = ModSeqs()
        self._listeners = ListenerSet()
        self._synced = 0
        self._lock = defer.DeferredLock()
        self._queued: list[defer.Deferred[None]] | None = None  # waiting for the next sync
        self._columns: Columns | None = None  # built on demand; dropped at any change
        self._cache_writes: dict[tuple[bytes, str], str] = {}  # not yet written
        self._cache_writing = False

    @property
    def highest_modseq(self) -> int:
        return self._modseqs.highest

    # -- catching up with the database ----------------------------------------------

    def sync(self) -> defer.Deferred[None]:
        """Bring the index up to date (one at a time); listeners hear what changed.

        Callers that ask while a sync waits its turn share that one: it starts after
        they asked, so it sees whatever they committed before asking. (Every write
        and every NOTIFY asks for one; under load, one query then serves them all
        instead of each queueing its own, and a NOOP no longer waits behind a queue
        of syncs. Measured with ``bench/imap_load.py --postgresql``.)"""
        d: defer.Deferred[None] = defer.Deferred()
        if self._queued is not None:
            self._queued.append(d)
            return d
        waiters = self._queued = [d]

        def start() -> defer.Deferred[None]:
            if self._queued is waiters:
                self._queued = None  # asked from now on: the next sync
            return self._sync_once()

        def fire(result: object) -> None:
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(None)

        self._lock.run(start).addBoth(fire)
        return d

    def _sync_once(self) -> defer.Deferred[None]:
        if self.deleted:
            return defer.succeed(None)
        d = self._store.db.run_statement(sql.sync, self.id, self._synced)
        return d.addCallback(lambda got: self._apply(*got))

    def _apply(self, meta: FolderMeta | None, rows: list[MessageRow],
               gone: list[tuple[int, int]], cached: list[tuple[int, str, str]]) -> None:
        if meta is None:
            self._vanish()
            return
        name, self.uid_validity, self.uid_next, highest, self.special_use, self.mailbox_id = meta
        if name != self.name:
            self._store._renamed(self, name)
        added: list[MessageInfo] = []
        changed: list[MessageInfo] = []
        for uid, flags, size, date, recent, modseq, digest, email_id in rows:
            old = self._infos.get(uid)
            info = MessageInfo(uid=uid, key=f"pg.{self.id}.{uid}", size=size,
                               flags=frozenset(flags), internal_date=date,
                               recent=recent if old is None else old.recent and recent,
                               modseq=modseq)
            (added if old is None else changed).append(info)
            self._infos[uid] = info
            self._hashes[uid] = digest
            self._email_ids[uid] = email_id
            self._modseqs.by_uid[uid] = modseq
        for uid, key, value in cached:
            self._cache.setdefault(uid, {})[key] = value
        expunged: list[int] = []
        by_modseq: dict[int, list[int]] = {}
        for uid, modseq in gone:
            by_modseq.setdefault(modseq, []).append(uid)
        for modseq, uids in sorted(by_modseq.items()):
            self._modseqs.expunge(uids, modseq)
            for uid in uids:
                if self._infos.pop(uid, None) is not None:
                    self._hashes.pop(uid, None)
                    self._email_ids.pop(uid, None)
                    self._cache.pop(uid, None)
                    expunged.append(uid)
        self._modseqs.highest = max(self._modseqs.highest, highest)
        self._synced = max(self._synced, highest)
        if added or changed or expunged:
            self._columns = None
        if added:
            self._listeners.added(self, added)
        if changed:
            self._listeners.changed(self, changed)
        if expunged:
            self._listeners.expunged(self, sorted(expunged))

    def _vanish(self) -> None:
        """The folder was deleted (here or on another node): every message is gone."""
        if self.deleted:
            return
        self.deleted = True
        self._columns = None
        uids = list(self._infos)
        self._infos.clear()
        self._hashes.clear()
        self._cache.clear()
        if uids:
            self._modseqs.expunge(uids)
            self._listeners.expunged(self, uids)
        self._store._forget(self)

    # -- IFolder ----------------------------------------------------------------------

    def messages(self) -> list[MessageInfo]:
        return list(self._infos.values())

    def get(self, uid: int) -> MessageInfo | None:
        return self._infos.get(uid)

    def columns(self) -> Columns:
        if self._columns is None:
            infos = self._infos.values()  # UID order: sync adds rows by ascending UID
            self._columns = Columns(tuple(i.uid for i in infos), tuple(i.flags for i in infos),
                                    tuple(int(i.recent) for i in infos),
                                    tuple(i.size for i in infos),
                                    tuple(i.internal_date for i in infos))
        return self._columns

    def fill_dates(self, uids: Iterable[int] | None = None) -> defer.Deferred[None]:
        return defer.succeed(None)

    def modseq_of(self, uid: int) -> int:
        return self._modseqs.get(uid)

    def changed_since(self, modseq: int) -> list[int]:
        return self._modseqs.changed_since(modseq)

    def expunged_since(self, modseq: int) -> list[int] | None:
        return self._modseqs.expunged_since(modseq)

    def refresh(self) -> defer.Deferred[None]:
        return self.sync()

    def open_message(self, uid: int) -> defer.Deferred[BinaryIO]:
        info = self._infos.get(uid)
        if info is None:
            return defer.fail(NoSuchMessage(uid))
        return defer.succeed(open_body(self._store.db, self._hashes[uid], info.size,
                                       self._store.chunks))

    def read_message(self, uid: int, offset: int = 0,
                     length: int | None = None) -> defer.Deferred[IMessageReader]:
        info = self._infos.get(uid)
        if info is None:
            return defer.fail(NoSuchMessage(uid))
        db, digest, size = self._store.db, self._hashes[uid], info.size
        want = range_length(size, offset, length)
        kept = self._store.chunks.get(digest, 0)
        if kept is not None and offset + want <= len(kept):  # no thread hop, no query
            data = kept[offset:offset + want]
            return defer.succeed(reader_for(io.BytesIO(data), len(data)))
        if want <= INLINE_READ:
            # The reader would read this inline, on our thread: fetch it in a database
            # thread first, so the reactor never waits on a query.
            def fetch() -> bytes:
                f = open_body(db, digest, size, self._store.chunks)
                try:
                    f.seek(offset)
                    return f.read(want)
                finally:
                    f.close()

            d = db.hop(fetch)
            return d.addCallback(lambda data: reader_for(io.BytesIO(data), len(data)))
        return defer.succeed(reader_for(open_body(db, digest, size, self._store.chunks), size,
                                        offset, length,
                                        run=db.hop))

    def set_flags(self, uids: Iterable[int], flags: Iterable[str],
                  mode: str) -> defer.Deferred[list[MessageInfo]]:
        if mode not in ("add", "remove", "replace"):
            return defer.fail(StoreError(f"unknown flag mode {mode!r}"))
        wanted = normalize_flags(flags)
        asked = sorted({u for u in uids if u in self._infos})
        d = self._store._submit(SetFlags(self.id, asked, wanted, mode))
        return d.addCallback(
            lambda _: [i for i in (self._infos.get(u) for u in asked) if i is not None])

    def expunge(self, uids: Iterable[int] | None = None) -> defer.Deferred[list[int]]:
        d = self._store._submit(Expunge(self.id, None if uids is None else sorted(set(uids))))
        return d  # type: ignore[return-value]

    def _copy(self, uids: Iterable[int], dest: IFolder,
              move: bool) -> defer.Deferred[list[tuple[int, int]]]:
        if not isinstance(dest, PostgresFolder) or dest._store is not self._store or dest.deleted:
            return defer.fail(NoSuchFolder(getattr(dest, "name", "?")))
        d = self._store.db.run(sql.copy, self.id, dest.id, sorted(set(uids)), move)

        def synced(pairs: list[tuple[int, int]]) -> defer.Deferred[list[tuple[int, int]]]:
            both = defer.gatherResults([dest.sync(), self.sync()], consumeErrors=True)
            # Committed: a database gone right after must not answer NO for a copy that
            # exists (the client's retry would copy twice); the folders catch up on
            # their next sync, as after a lost notification.
            both.addErrback(_warn_refresh, "copy")
            return both.addCallback(lambda _: pairs)

        return d.addCallback(synced)

    def copy(self, uids: Iterable[int], dest: IFolder) -> defer.Deferred[list[tuple[int, int]]]:
        return self._copy(uids, dest, move=False)

    def move(self, uids: Iterable[int], dest: IFolder) -> defer.Deferred[list[tuple[int, int]]]:
        return self._copy(uids, dest, move=True)

    def claim_recent(self) -> defer.Deferred[set[int]]:
        # What this node shows as recent stops being so at once (the contract: a
        # session that looks next must not wait for the database); the UPDATE then
        # claims them, and whatever other nodes added meanwhile, for everyone.
        known = set(self._infos)
        mine = self._unrecent({u for u, i in self._infos.items() if i.recent})
        d = self._store.db.run(sql.claim_recent, self.id)

        def claimed(uids: list[int]) -> set[int]:
            # Of what the UPDATE took, what this node learnt of only since and still
            # shows recent: what it knew then was ours above or another claim's.
            late = {u for u in uids if u not in known
                    and (i := self._infos.get(u)) is not None and i.recent}
            return mine | self._unrecent(late)

        return d.addCallback(claimed)

    def _unrecent(self, mine: set[int]) -> set[int]:
        """Show these messages as not recent in this node's index; returns them."""
        if mine:
            self._columns = None
        for uid in mine:
            info = self._infos[uid]
            self._infos[uid] = MessageInfo(info.uid, info.key, info.size, info.flags,
                                           info.internal_date, False, info.modseq)
        return mine

    def add_listener(self, listener: IFolderListener) -> None:
        self._listeners.add(listener)

    def remove_listener(self, listener: IFolderListener) -> None:
        self._listeners.remove(listener)

    def get_cached(self, uid: int, key: str) -> str | None:
        if key == EMAIL_ID_KEY:
            return self._email_ids.get(uid)
        return self._cache.get(uid, {}).get(key)

    def save_dates(self, uids: Iterable[int]) -> defer.Deferred[dict[int, float]]:
        wanted = [u for u in uids if u in self._infos]
        if not wanted:
            return defer.succeed({})
        return self._store.db.run(sql.save_dates, self.id, wanted)

    def set_cached(self, uid: int, key: str, value: str) -> None:
        # The cache is per body (shared by every copy); an EMAILID is per message and
        # the database carried it over already.
        if uid not in self._infos or key == EMAIL_ID_KEY:
            return
        self._cache.setdefault(uid, {})[key] = value
        self._cache_writes[(self._hashes[uid], key)] = value
        self._write_cache()

    def _write_cache(self) -> None:
        """Write the values cached so far, one statement at a time: those cached while
        one is written go together in the next (a SEARCH caches thousands at once)."""
        if self._cache_writing or not self._cache_writes:
            return
        keys = sorted(self._cache_writes)[:CACHE_BATCH]
        entries = [(digest, key, self._cache_writes.pop((digest, key))) for digest, key in keys]
        self._cache_writing = True
        d = self._store.db.run(sql.set_cached, entries)
        d.addErrback(lambda f: log.failure("caching {n} values failed", f, n=len(entries)))

        def next_batch(_: object) -> None:
            self._cache_writing = False
            self._write_cache()

        d.addCallback(next_batch)

    def read_headers(self, uids: Sequence[int],
                     fn: Callable[[BinaryIO], _T]) -> defer.Deferred[list[tuple[int, _T]]]:
        db = self._store.db
        wanted = [(u, self._hashes[u], info.size) for u in uids
                  if (info := self._infos.get(u)) is not None]
        if not wanted:
            return defer.succeed([])

        def read() -> list[tuple[int, _T]]:
            # In a database thread, outside any transaction: a header longer than the
            # first chunk is read through the message's own file, whose reads take a
            # connection each.
            blocks: dict[bytes, bytes] = {}
            hashes = sorted({digest for _, digest, _ in wanted})
            for i in range(0, len(hashes), HEADER_QUERY):
                blocks.update(db.statement(sql.header_blocks, hashes[i:i + HEADER_QUERY]))
            out = []
            for uid, digest, size in wanted:
                block = blocks.get(digest, b"")
                if size and not block:
                    continue  # expunged and its body collected meanwhile
                f: BinaryIO
                if block.endswith(b"\r\n\r\n") or len(block) >= size:
                    f = io.BytesIO(block)
                else:
                    f = open_body(db, digest, size)
                try:
                    out.append((uid, fn(f)))
                finally:
                    f.close()
            return out

        return db.hop(read)


@implementer(IMailAccount, IQuotaRoot)
class PostgresAccount:
    """Implements: IMailAccount and IQuotaRoot (the user's usage, ``PostgresStore.quota``)."""

    def __init__(self, store: PostgresStore, user: str, account_id: int) -> None:
        self._store = store
        self.user = user
        self.id = account_id

    def new_message(self) -> IMessageWriter:
        return self._store.new_message()

    def quota_limit(self) -> int:
        return self._store.quota_limit(self.user)

    def quota(self) -> defer.Deferred[QuotaUsage]:
        return self._store.quota(self.user)

    def append(self, name: str, message: IMessageWriter, flags: Iterable[str] = (),
               internal_date: float | None = None, recent: bool = True,
               ) -> defer.Deferred[tuple[int, int]]:
        """Into a folder open on this node, the message goes straight into the next
        write batch (which finds the folder by name, and fails alone if there is none):
        no open and no sync of its own before it (an APPEND's transactions were a
        lookup, a sync, the write and the sync after it)."""
        try:
            canon = canonical_folder(name)
        except StoreError:
            message.abort()
            return defer.fail()
        known = self._store._by_name.get((self.id, canon))
        if known is None or known.deleted or not isinstance(message, PostgresMessageWriter):
            return append_message(self, name, message, flags, internal_date, recent)
        target = DeliveryTarget(self.user, canon, frozenset(flags), internal_date,
                                recent=recent)

        def validity(placed: list[tuple[int, int]]) -> tuple[int, int] | defer.Deferred[
                tuple[int, int]]:
            fid, uid = placed[0]
            if fid == known.id:
                return known.uid_validity, uid
            # Another folder of that name by now (renamed, deleted, made again on
            # another node): its UIDVALIDITY from the database.
            d = self._store.db.run_statement(sql.uid_validity, fid)

            def answer(got: int | None) -> tuple[int, int]:
                if got is None:
                    raise NoSuchFolder(canon)
                return got, uid

            return d.addCallback(answer)

        return message.commit_placed([target]).addCallback(validity)

    def list_folders(self) -> defer.Deferred[list[str]]:
        d = self._store.db.run(sql.list_folders, self.id)
        return d.addCallback(lambda names: [INBOX, *sorted(n for n in names if n != INBOX)])

    def open_folder(self, name: str) -> defer.Deferred[IFolder]:
        return _guard(lambda: self._store._open_folder(self.id, canonical_folder(name)))

    def create_folder(self, name: str,
                      special_use: str | None = None) -> defer.Deferred[None]:
        return _guard(lambda: self._store.db.run(sql.create_folder, self.id,
                                                 canonical_folder(name), special_use))

    def delete_folder(self, name: str) -> defer.Deferred[None]:
        def run() -> defer.Deferred[None]:
            canon = canonical_folder(name)
            if canon == INBOX:
                raise InvalidFolderName("INBOX cannot be deleted")
            d = self._store.db.run(sql.delete_folder, self.id, canon)
            return d.addCallback(self._store._deleted)

        return _guard(run)

    def rename_folder(self, old: str, new: str) -> defer.Deferred[None]:
        def run() -> defer.Deferred[None]:
            src, dst = canonical_folder(old), canonical_folder(new)
            if dst == src or is_inferior(dst, src):
                raise InvalidFolderName(f"cannot rename {src} into itself")
            d = self._store.db.run(sql.rename_folder, self.id, src, dst)
            return d.addCallback(self._store._after_rename)

        return _guard(run)

    def subscriptions(self) -> defer.Deferred[set[str]]:
        return self._store.db.run(sql.subscriptions, self.id)

    def subscribe(self, name: str) -> defer.Deferred[None]:
        return _guard(lambda: self._store.db.run(sql.subscribe, self.id,
                                                 canonical_folder(name), True))

    def unsubscribe(self, name: str) -> defer.Deferred[None]:
        return _guard(lambda: self._store.db.run(sql.subscribe, self.id,
                                                 canonical_folder(name), False))


@implementer(IMailStore, IAccountListing, IQuotaStore)
class PostgresStore:
    """Implements: IMailStore, IAccountListing and IQuotaStore, on one PostgreSQL database (``dsn``)
    that any number of nodes share. The schema must be current (``mailhost db
    upgrade``); ``start`` refuses any other with ``SchemaMismatch``."""

    def __init__(self, dsn: str, *, pool_size: int = 8, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default

            reactor = default
        self._reactor: IReactorThreads = reactor
        self.db = Database(dsn, max_size=pool_size, reactor=reactor, unavailable=StoreUnavailable)
        self._notes = NotifyListener(dsn, self._notified, reactor)
        self._accounts: dict[str, PostgresAccount] = {}
        self._opened: set[str] = set()  # accounts the listeners have heard of
        self._live: dict[int, PostgresFolder] = {}
        #: Live folders by (account id, name) as last known: a hint, checked by the
        #: sync that opening a folder does anyway (``_open_folder``).
        self._by_name: dict[tuple[int, str], PostgresFolder] = {}
        self.chunks = ChunkCache()  # the small body chunks read or written last
        self._account_listeners = AccountListenerSet()
        self._started: defer.Deferred[None] | None = None
        self._quota_limits: QuotaLimits = lambda user: 0
        self._writes: GroupCommit[writes.Op, writes.Result] = GroupCommit(
            self._commit_batch, self._after_batch)

    # -- life ---------------------------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        if self._started is None:
            self.db.start()
            self._notes.start()

            def check(conn: Any) -> None:
                migrations.check(conn)

            d = self.db.run(check)
            self._started = d
        out: defer.Deferred[None] = defer.Deferred()

        def relay(result: object) -> object:
            if isinstance(result, Failure):
                self._started = None  # the next start tries again
                out.errback(result)
                return None
            out.callback(None)
            return result

        self._started.addBoth(relay)
        return out

    def wait_listening(self, timeout: float = 10.0) -> defer.Deferred[bool]:
        """Deferred firing True once this node hears other nodes' changes."""
        from twisted.internet import threads

        return threads.deferToThread(self._notes.wait_ready, timeout)

    def close(self) -> defer.Deferred[None]:
        self._notes.stop()
        return self.db.close()

    def _ready(self, fn: Callable[[], defer.Deferred[_T]]) -> defer.Deferred[_T]:
        started = self.start()
        started.addCallback(lambda _: fn())
        return started  # type: ignore[return-value]

    # -- notifications and the live folders ------------------------------------------

    def _notified(self, payload: str | None) -> None:
        if payload is None:
            folders = list(self._live.values())
        else:
            try:
                folder = self._live.get(int(payload))
            except ValueError:
                return
            folders = [] if folder is None else [folder]
        for folder in folders:
            folder.sync().addErrback(
                lambda f: log.failure("folder sync failed", f, event="pg_sync"))

    def _forget(self, folder: PostgresFolder) -> None:
        if self._live.get(folder.id) is folder:
            del self._live[folder.id]
        if self._by_name.get((folder.account_id, folder.name)) is folder:
            del self._by_name[(folder.account_id, folder.name)]

    def _deleted(self, folder_id: int) -> None:
        folder = self._live.get(folder_id)
        if folder is not None:
            folder._vanish()

    def _renamed(self, folder: PostgresFolder, name: str) -> None:
        folder.name = name
        self._by_name[(folder.account_id, name)] = folder

    def _after_rename(self, renamed: list[tuple[int, str]]) -> defer.Deferred[None]:
        syncs = []
        for folder_id, name in renamed:
            folder = self._live.get(folder_id)
            if folder is not None:
                self._renamed(folder, name)
                syncs.append(folder.sync())
        d = defer.gatherResults(syncs, consumeErrors=True)
        return d.addCallback(lambda _: None)

    def _open_folder(self, account_id: int, canon: str) -> defer.Deferred[IFolder]:
        """The live folder, synced. One this node has open already is found by name
        without a query: its sync (which opening does anyway) reads its row, so if it
        still has that name it is the folder of that name (every APPEND opens its
        folder: one transaction less each)."""
        known = self._by_name.get((account_id, canon))
        if known is None or known.deleted:
            return self._find_folder(account_id, canon)

        def check(_: object) -> IFolder | defer.Deferred[IFolder]:
            if known.deleted or known.name != canon:  # renamed or deleted meanwhile
                return self._find_folder(account_id, canon)
            return known

        return known.sync().addCallback(check)

    def _find_folder(self, account_id: int, canon: str) -> defer.Deferred[IFolder]:
        d = self.db.run_statement(sql.find_folder, account_id, canon)

        def found(row: tuple[int, int, str | None] | None) -> defer.Deferred[IFolder]:
            if row is None:
                raise NoSuchFolder(canon)
            folder_id, validity, special_use = row
            folder = self._live.get(folder_id)
            if folder is None:
                folder = self._live[folder_id] = PostgresFolder(self, folder_id, canon, validity,
                                                                special_use, account_id)
            self._by_name[(account_id, canon)] = folder
            return folder.sync().addCallback(lambda _: folder)

        return d.addCallback(found)

    # -- IMailStore ---------------------------------------------------------------------

    def _account(self, user: str, account_id: int) -> PostgresAccount:
        account = self._accounts.get(user)
        if account is None:
            account = self._accounts[user] = PostgresAccount(self, user, account_id)
            self._tell_opened(user)
        return account

    def _tell_opened(self, user: str) -> None:
        if user not in self._opened:
            self._opened.add(user)
            self._account_listeners.opened(user)

    def open_account(self, user: str) -> defer.Deferred[IMailAccount]:
        try:
            split_user(user)
        except StoreError:
            return defer.fail()
        account = self._accounts.get(user)
        if account is not None:
            return defer.succeed(account)

        def made(got: tuple[int, bool]) -> IMailAccount:
            return self._account(user, got[0])

        return self._ready(lambda: self.db.run(sql.ensure_account, user).addCallback(made))

    def new_message(self) -> IMessageWriter:
        return PostgresMessageWriter(self)

    def _deliver_placed(self, spool: Any, digest: bytes, size: int, targets: Sequence[DeliveryTarget],
                        ) -> defer.Deferred[list[tuple[int, int]]]:
        """The delivery's [(folder id, uid)], in target order."""
        import time

        try:
            plan = []
            for t in targets:
                split_user(t.user)
                date = time.time() if t.internal_date is None else t.internal_date
                plan.append((t.user, canonical_folder(t.folder), sorted(normalize_flags(t.flags)),
                             date, t.recent))
        except StoreError:
            return defer.fail()

        def done(placed: Any) -> list[tuple[int, int]]:
            for user in sorted({t.user for t in targets}):
                self._tell_opened(user)
            return placed  # type: ignore[no-any-return]

        return self._ready(lambda: self._submit((spool, digest, size, plan))
                           .addCallback(done))

    def _submit(self, op: writes.Op) -> defer.Deferred[writes.Result]:
        """A delivery, flag change or expunge, in the next batch (``writes``)."""
        return self._writes.submit(op)

    def _commit_batch(self, batch: list[writes.Op],
                      ) -> defer.Deferred[Sequence[writes.Result | Exception]]:
        return self.db.run(writes.write_batch, batch)

    def _after_batch(self, done: list[tuple[writes.Op, writes.Result]]) -> defer.Deferred[object]:
        """Sync each live folder a batch wrote to, once, before its writes' Deferreds
        fire (the caller, IDLE and other sessions see the change at once)."""
        folders = sorted({fid for op, result in done for fid in writes.folders_of(op, result)
                          if fid in self._live})
        syncs = [self._live[fid].sync() for fid in folders]
        d: defer.Deferred[Any] = defer.gatherResults(syncs, consumeErrors=True)
        # Committed: the deliveries succeeded whatever the refresh of an open folder
        # does next (a database gone just after the commit must not turn a stored
        # message into a 451, which the sender would retry into a second copy; the
        # folder catches up on its next sync, as after a lost notification).
        d.addErrback(_warn_refresh, "write")
        return d

    # -- IAccountListing ----------------------------------------------------------------

    def accounts(self) -> defer.Deferred[list[str]]:
        return self._ready(lambda: self.db.run(sql.accounts))

    def add_account_listener(self, listener: IAccountListener) -> None:
        self._account_listeners.add(listener)

    # -- IQuotaStore: usage is the account row's count, kept by triggers (schema 5) ------

    def set_quota_limits(self, limits: QuotaLimits) -> None:
        self._quota_limits = limits

    def quota_limit(self, user: str) -> int:
        return self._quota_limits(user)

    def quota(self, user: str) -> defer.Deferred[QuotaUsage]:
        d = self._ready(lambda: self.db.run(sql.usage, user))
        return d.addCallback(lambda got: QuotaUsage(got[0], got[1], self.quota_limit(user)))

    def remove_account_listener(self, listener: IAccountListener) -> None:
        self._account_listeners.remove(listener)


