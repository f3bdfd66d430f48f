"""MaildirFolder: the live, indexed view of one Maildir++ folder (Implements: IFolder).

Reads (``messages``, ``get``, flags, sizes) come from the in-memory index and touch
no file. Changes run their file work in the reactor's thread pool, serialised per
folder by a DeferredLock, and update the index and listeners on the reactor thread.

The folder holds the index, the folder lock, the listeners and the UIDVALIDITY/UIDNEXT
pair, and builds its parts, each a class with its own state that reaches the folder
only through what it is given (``__init__``):

- ``maildir_numbering``: UIDs threads handed out, into the index in order
  (UidHandOver); SMTP deliveries numbered in batches (DeliveryNumbering);
- ``maildir_rescan``: listings, and others' renames, unlinks and new files applied;
- ``maildir_disk_watch``: the watcher's events, ours told from other programs';
- ``maildir_changes``: flag changes, expunges and \\Recent claims, one pass per lock;
- ``maildir_reader``: message files opened and header blocks read;
- ``maildir_keywords``: keyword letters, following dovecot-keywords;
- ``maildir_dates``: dates the index does not hold yet, and RFC 8514 save dates;
- ``maildir_journal`` and ``maildir_cache``: the modseq journal and the folder cache
  files, written in batches.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailhost.store import objectid
from mailhost.store._maildir import maildir_modseq, maildirsize
from mailhost.store._maildir.dovecot_keywords import KeywordFile
from mailhost.store._maildir.maildir_cache import FolderCache
from mailhost.store._maildir.maildir_changes import ChangePasses
from mailhost.store._maildir.maildir_dates import FolderDates
from mailhost.store._maildir.maildir_disk_watch import DiskWatch
from mailhost.store._maildir.maildir_index import (
    FolderIndex,
    Loaded,
    dir_stamp,
    fast_info,
    load_folder,
)
from mailhost.store._maildir.maildir_io import rename_all, transfer_files, unlink_all
from mailhost.store._maildir.maildir_journal import ModSeqJournal
from mailhost.store._maildir.maildir_keywords import FolderKeywords
from mailhost.store._maildir.maildir_names import (
    Keywords,
    filename,
    make_info,
    unique_base,
)
from mailhost.store._maildir.maildir_numbering import DeliveryNumbering, UidHandOver
from mailhost.store._maildir.maildir_numbering import Row as Row  # maildir_writer's import
from mailhost.store._maildir.maildir_reader import FolderReader
from mailhost.store._maildir.maildir_rescan import FolderRescan
from mailhost.store._maildir.maildir_uids import FolderUids
from mailhost.store.flags import apply_mode
from mailhost.store.interfaces import (
    Columns,
    IFolder,
    IFolderListener,
    IHeaderBlocks,
    IIndexedFolder,
    IMessageReader,
    MessageInfo,
    NoSuchFolder,
)
from mailhost.store.modseq import ModSeqListeners, ModSeqs

if TYPE_CHECKING:  # they import this module
    from mailhost.store._maildir.maildir_account import MaildirAccount
    from mailhost.store.maildir import MaildirStore

_T = TypeVar("_T")

#: dovecot-uidlist (and mailhost-cache at load) is rewritten without the records of
#: expunged messages once they outnumber the live ones and this many.
COMPACT_MIN_STALE = 1000


def delivered_row(base: str, part: str | None, size: int, date: float,
                  in_new: bool = True) -> Row:
    """The Row of a copy a writer just linked into new/ (or cur/: DeliveryTarget.recent
    false) (stored CRLF: no wrap)."""
    return base, in_new, part, False, size, float(date)


@implementer(IIndexedFolder, IHeaderBlocks)
class MaildirFolder:
    """Implements: IIndexedFolder and IHeaderBlocks (maildir_headers). One live object
    per (user, folder) in a MaildirStore."""

    log = Logger()

    def __init__(self, store: MaildirStore, account: MaildirAccount, name: str,
                 path: str) -> None:
        self._store = store
        self._account = account
        self.name = name
        self.uid_validity = 0
        self.uid_next = 1
        self._index = FolderIndex(Keywords())
        self._uids = FolderUids(path, store.modes, store.fsync)
        self._uids.known = lambda base: self._index.by_base.get(base)
        self._modseqs = ModSeqs()
        self._lock = defer.DeferredLock()  # serialises renames/unlinks/scans
        self._file_lock = threading.Lock()  # uidlist/keywords/cache files, in threads
        self._stale = 0
        self._gone = False

        # Its parts: each reaches the folder only through what it is given here (the
        # index, directory and UIDVALIDITY as the folder has them at the time).
        reactor, watcher = store._reactor, store._watcher

        def run_blocking(fn: Callable[..., _T], *args: object) -> defer.Deferred[_T]:
            # The store's, looked up at each call (tests count thread hops by
            # replacing it on the store).
            return store.run_blocking(fn, *args)

        index, where, gone = (lambda: self._index), (lambda: self._path), (lambda: self._gone)
        self._handover = UidHandOver(self._uids, self._seen_uid, self._insert,
                                     lambda infos: self._listeners.added(self, infos), gone)
        self._kw = FolderKeywords(
            KeywordFile(path, store.modes, store.fsync, self._uids.dotlock), run_blocking,
            index, self._changed, gone)
        self._rescan = FolderRescan(run_blocking, self._uids, self._handover, self._kw,
                                    index, where, self._uid_next_at_least, self._changed,
                                    self._expunged)
        self._numbering = DeliveryNumbering(reactor, run_blocking, lambda: store.syncer,
                                            self._uids, self._handover, index,
                                            self._rescan.relist, gone, where)
        self._disk = DiskWatch(reactor, lambda: watcher.start(self),
                               lambda: watcher.stop(self), watcher.drain, self._run,
                               self._rescan, index, self._handover.pending, where)
        self._reader = FolderReader(run_blocking, self._uids, index, where, self._lock,
                                    lambda: self._run(self._rescan.rescan, True), gone)
        self._journal = ModSeqJournal(reactor, run_blocking, self._file_lock, index,
                                      lambda: self._modseqs, where,
                                      lambda: self.uid_validity, store.modes,
                                      store.fsync, gone)
        self._listeners = ModSeqListeners(self._modseqs, self._journal.record)
        self._cache = FolderCache(reactor, run_blocking, self._file_lock, where,
                                  lambda: self.uid_validity, store.modes, gone)
        self._dates = FolderDates(reactor, run_blocking, self._uids, index, where,
                                  self._run, self._rescan.rescan, self.refresh,
                                  self.get_cached, self.set_cached, gone)
        self._changes = ChangePasses(
            run=self._run, run_blocking=run_blocking, index=index, path=where,
            account=account, uids=self._uids, disk=self._disk, dates=self._dates,
            keywords=self._kw, rescan=self._rescan, changed=self._changed,
            expunged=self._expunged, compact_if_stale=self._compact_if_stale,
            modseq_of=self.modseq_of, flags_again=self._set_flags_once,
            expunge_again=self._expunge_locked)
        self._path = path  # (the setter tells the parts that keep it)

    @property
    def _path(self) -> str:
        return self._dir

    @_path.setter
    def _path(self, path: str) -> None:
        # Folder renames move the directory; the index reads dates from it.
        self._dir = self._index.path = path
        self._uids.set_path(path)
        self._kw.file.set_path(path)
        if self._disk.mode is not None:  # watch the new place
            self._disk.stop()
            self._watch_if_listened()

    @property
    def special_use(self) -> str | None:
        return self._account._special.get(self.name)

    # -- loading -------------------------------------------------------------------

    async def _load(self) -> None:
        path, fsync, modes, uids = self._path, self._store.fsync, self._store.modes, self._uids
        kwfile = self._kw.file

        def load() -> tuple[tuple[int, int] | None, int, Loaded]:
            # Dir times from before the listing: a later change moves them, so the
            # first rescan (SELECT, STATUS) can skip its listing when nothing changed.
            stamp = dir_stamp(path)
            current = kwfile.current()
            assert current is not None  # current() waits for the map
            generation, by_index = current
            return stamp, generation, load_folder(path, fsync, modes, True, uids,
                                                  Keywords(by_index))

        stamp, self._kw.generation, loaded = await self._store.run_blocking(load)
        self._rescan.stamp = stamp
        self.uid_validity = loaded.validity
        self.uid_next = loaded.uid_next
        self._index = loaded.index
        self._index.path = self._path
        self._stale = loaded.stale
        index = self._index
        mods, self._journal.reserved = await self._store.run_blocking(
            maildir_modseq.load, self._path, self.uid_validity, list(index.uids),
            index.letters(), self._store.modes, self._store.fsync)
        mods.clock = self._store.modseq_clock
        self._modseqs = self._listeners.modseqs = mods
        index.modseqs = mods.by_uid
        await self._cache.load(self._index, COMPACT_MIN_STALE)
        await self._compact_if_stale()
        if loaded.foreign:
            await self._rescan.adopt(loaded.foreign)
        if self._index.unknown_dates:
            self._dates.schedule()

    # -- mod-sequences (RFC 7162; numbered by ModSeqListeners, kept by maildir_journal) -

    @property
    def highest_modseq(self) -> int:
        return self._modseqs.highest

    def modseq_of(self, uid: int) -> int:
        return self._modseqs.get(uid)

    def changed_since(self, modseq: int) -> list[int]:
        return self._modseqs.changed_since(modseq)

    def expunged_since(self, modseq: int) -> list[int] | None:
        return self._modseqs.expunged_since(modseq)

    # -- index helpers ---------------------------------------------------------------

    def _row(self, base: str, recent: bool, part: str | None, wrap: bool, size: int,
             date: float, uid: int) -> Row:
        return base, recent, part, wrap, size, float(date)

    def _insert(self, uid: int, row: Row) -> MessageInfo:
        base, recent, part, wrap, size, date = row
        index = self._index
        sid = index.state(part, recent)
        index.add(uid, base, size, date, sid, wrap)
        return fast_info(uid, base, size, index.table[sid].flags, date, recent)

    def _remove(self, uids: Iterable[int]) -> None:
        index = self._index
        if self._disk.mode == "inotify":
            # The watch may still report their files: no arrivals (DiskWatch.removed).
            uids = list(uids)
            self._disk.removed(index.keys[i] for i in map(index.pos, uids) if i >= 0)
        gone = index.remove(uids)
        self._cache.drop(gone)
        self._stale += len(gone)

    def _changed(self, infos: list[MessageInfo]) -> None:
        """Tell listeners these messages changed (flags)."""
        self._listeners.changed(self, infos)

    def _expunged(self, uids: list[int]) -> None:
        """Take these (indexed) messages out of the folder and tell listeners."""
        self._remove(uids)
        self._listeners.expunged(self, uids)

    @property
    def listings(self) -> int:
        """Directory listings done to pick up others' changes (a test hook)."""
        return self._rescan.listings

    # -- UIDs of new files (maildir_numbering) -------------------------------------------

    def _seen_uid(self, uid: int) -> None:
        if uid >= self.uid_next:
            self.uid_next = uid + 1

    def _uid_next_at_least(self, uid_next: int) -> None:
        self.uid_next = max(self.uid_next, uid_next)

    def _delivered(self, rows: Sequence[Row], expected: bool) -> None:
        """Delivered files with no UID yet (DeliveryNumbering.delivered)."""
        self._numbering.delivered(rows, expected)

    def _numbered_all(self) -> defer.Deferred[None]:
        """Fires once every delivery queued so far is numbered (or its batch failed)."""
        return self._numbering.numbered_all()

    @property
    def batches(self) -> int:
        """UID batches run for deliveries (a test and benchmark hook)."""
        return self._numbering.batches

    # -- plumbing -----------------------------------------------------------------------

    def _check(self) -> None:
        if self._gone:
            raise NoSuchFolder(self.name)

    async def _locked(self, fn: Callable[..., Awaitable[_T]], *args: object) -> _T:
        await self._lock.acquire()
        try:
            self._check()
            return await fn(*args)
        finally:
            self._lock.release()

    def _run(self, fn: Callable[..., Awaitable[_T]], *args: object) -> defer.Deferred[_T]:
        return defer.Deferred.fromCoroutine(self._locked(fn, *args))

    async def _compact(self) -> None:
        """Recreate dovecot-uidlist without the records of expunged files (in a
        thread, under its lock; see FolderUids.compact)."""
        live = set(self._index.by_base) | set(self._handover.pending)
        await self._store.run_blocking(self._uids.compact, live)
        self._stale = 0

    async def _compact_if_stale(self) -> None:
        """``_compact`` once expunged records outnumber the live ones (and a minimum)."""
        if self._stale > max(COMPACT_MIN_STALE, len(self._index)):
            await self._compact()

    # -- IFolder: reads -------------------------------------------------------------------

    def messages(self) -> list[MessageInfo]:
        return self._index.infos()

    def get(self, uid: int) -> MessageInfo | None:
        return self._index.get(uid)

    def columns(self) -> Columns:
        """The whole index as position-aligned sequences, with no per-message object:
        the bulk path for IMAP SELECT and FETCH on big folders (IIndexedFolder)."""
        return self._index.columns()

    def open_message(self, uid: int) -> defer.Deferred[BinaryIO]:
        return self._reader.open_message(uid)

    def read_message(self, uid: int, offset: int = 0,
                     length: int | None = None) -> defer.Deferred[IMessageReader]:
        return self._reader.read_message(uid, offset, length)

    def read_headers(self, uids: Sequence[int], fn: Callable[[BinaryIO], _T],
                     ) -> defer.Deferred[list[tuple[int, _T]]]:
        """IHeaderBlocks: a batch of header blocks in one thread job (maildir_reader)."""
        return self._reader.read_headers(uids, fn)

    # -- IFolder: changes ----------------------------------------------------------------

    def refresh(self) -> defer.Deferred[None]:
        # A \Recent claim in flight needs no waiting for: it took its messages out of
        # the recent set when it was made (claim_recent).
        if (self._disk.mode == "inotify" and self._numbering.done
                and self._disk.nothing_foreign()):
            return defer.succeed(None)
        return self._run(self._refresh_now)

    async def _refresh_now(self) -> None:
        if not self._numbering.done:
            # Deliveries acknowledged before now are numbered first (no lock needed).
            await self._numbered_all()
        if self._disk.mode == "inotify":
            # The watch has told us of every change so far (once its queue is read).
            await self._disk.sync()
        else:
            await self._rescan.rescan()

    def set_flags(self, uids: Iterable[int], flags: Iterable[str],
                  mode: str) -> defer.Deferred[list[MessageInfo]]:
        return self._changes.set_flags(uids, flags, mode)

    def expunge(self, uids: Iterable[int] | None = None) -> defer.Deferred[list[int]]:
        return self._changes.expunge(uids)

    def claim_recent(self) -> defer.Deferred[set[int]]:
        return self._changes.claim_recent()

    # -- one change again, after a rescan (ChangePasses' flags_again, expunge_again) --

    async def _set_flags_once(self, requests: list[tuple[list[int], frozenset[str], str]],
                              results: list[dict[int, MessageInfo]]) -> set[int]:
        """Rename the files of the requests' UIDs (each ascending) to carry the flags
        the requests leave them with, applied in order, one rename per file; fills in
        each request's ``results`` (the message as that request left it). Returns the
        UIDs whose file was not under its indexed name."""
        learn = set().union(*(wanted for _, wanted, mode in requests if mode != "remove"))
        if learn:
            await self._kw.learn(learn)
        index = self._index
        final: dict[int, str | None] = {}  # uid -> info part after the requests so far
        after: list[dict[int, str | None]] = [{} for _ in requests]
        new_part_memo: dict[tuple[str | None, frozenset[str], bool], str | None] = {}
        for (uids, wanted, mode), seen in zip(requests, after, strict=True):
            for uid in uids:
                i = index.pos(uid)
                if i < 0:
                    continue
                st = index.state_at(i)
                part = final.get(uid, st.part)
                cur = st if part == st.part else index.table[index.state(part, st.recent)]
                new_flags = apply_mode(cur.flags, wanted, mode)
                if new_flags != cur.flags:
                    key = (part, new_flags, st.recent)
                    if key not in new_part_memo:
                        new_part_memo[key] = make_info(self._kw.letters(new_flags, cur.extra),
                                                       st.recent)
                    part = final[uid] = new_part_memo[key]
                seen[uid] = part
        renames: list[tuple[str, str]] = []
        updates: list[tuple[int, str | None, bool]] = []
        for uid, part in sorted(final.items()):
            i = index.pos(uid)
            st = index.state_at(i)
            if part == st.part:
                continue  # changed and changed back
            sub = "new" if st.recent else "cur"
            base = index.keys[i]
            renames.append((os.path.join(sub, filename(base, st.part)),
                            os.path.join(sub, filename(base, part))))
            updates.append((uid, part, st.recent))
        missed: set[int] = set()
        if renames:
            ok = await self._renaming(renames)
            changed: list[MessageInfo] = []
            for (uid, part, recent), done in zip(updates, ok, strict=True):
                i = index.pos(uid)
                if i < 0:
                    continue
                if done:
                    index.states[i] = index.state(part, recent)
                    changed.append(index.info_at(i))
                else:
                    missed.add(uid)
            self._changed(changed)
        for seen, result in zip(after, results, strict=True):
            for uid, part in seen.items():
                i = index.pos(uid)
                if uid in missed or i < 0:
                    continue
                info = index.info_at(i)
                st = index.state_at(i)
                if part != st.part:  # a later request of the pass changed it again
                    info = replace(info, flags=index.table[index.state(part, st.recent)].flags)
                result[uid] = info
        return missed

    async def _renaming(self, renames: list[tuple[str, str]]) -> list[bool]:
        """rename_all in a thread; meanwhile a date read on the reactor thread may find
        the file under its new name (see FolderIndex.date_at)."""
        moving = self._index.renaming
        for old, new in renames:
            moving[os.path.basename(old).partition(":")[0]] = new
        self._disk.renaming(renames)
        try:
            ok: list[bool] = await self._store.run_blocking(
                self._uids.locked, rename_all, self._path, renames)
            return ok
        finally:
            moving.clear()  # renames are serialised by the folder lock
            self._disk.settled()

    async def _expunge_locked(self, among: set[int] | None) -> list[int]:
        index = self._index
        deleted = {sid for sid, st in enumerate(index.table) if "\\Deleted" in st.flags}
        victims = [uid for uid, sid in zip(index.uids, index.states, strict=True)
                   if sid in deleted and (among is None or uid in among)]
        if not victims:
            return []
        rels = [index.relpath_at(index.pos(u)) for u in victims]
        self._disk.unlinking(rels)  # see DiskWatch.nothing_foreign
        paths = [os.path.join(self._path, rel) for rel in rels]
        # Quota (maildir_quota): counted in the unlinks' own thread hop when every
        # file went, as it usually does; a second hop held the folder lock as long
        # as the unlinks (issue 16: EXPUNGE and STORE queued on this lock under load).
        charge = self._account.charge_in_thread(
            -sum(index.sizes[index.pos(u)] for u in victims), -len(victims))
        locked = self._uids.locked

        def work() -> list[str]:
            gone = locked(unlink_all, paths)
            if not gone:
                maildirsize.add_all((charge,))
            return gone

        missing = await self._store.run_blocking(work)
        if missing:
            # Another program renamed (flagged) or removed some: learn their current
            # names (the gone leave the index, listeners hear of it), then remove the
            # renamed ones that are still \Deleted, under their new names.
            lost = {p: u for p, u in zip(paths, victims, strict=True)}
            retry = [lost[p] for p in missing]
            await self._rescan.rescan(True)
            index = self._index
            again = [u for u in retry if (i := index.pos(u)) >= 0
                     and "\\Deleted" in index.state_at(i).flags]
            await self._store.run_blocking(
                self._uids.locked, unlink_all,
                [os.path.join(self._path, index.relpath_at(index.pos(u))) for u in again])
            keep = {u for u in retry if u in index} - set(again)  # no longer \Deleted
            victims = [u for u in victims if u not in keep]
        present = [u for u in victims if u in self._index]
        freed = sum(self._index.info_at(self._index.pos(u)).size for u in present)
        self._expunged(present)
        if missing:
            await self._account.charge(-freed, -len(present))  # quota (maildir_quota)
        await self._compact_if_stale()
        return victims

    # -- COPY and MOVE ------------------------------------------------------------------

    def copy(self, uids: Iterable[int], dest: IFolder) -> defer.Deferred[list[tuple[int, int]]]:
        uids = list(uids)
        ids = objectid.email_ids(self, uids)  # RFC 8474: copies keep their EMAILID
        return self._run(self._transfer, uids, dest, False).addCallback(objectid.carry, dest, ids)

    def move(self, uids: Iterable[int], dest: IFolder) -> defer.Deferred[list[tuple[int, int]]]:
        uids = list(uids)
        ids = objectid.email_ids(self, uids)
        return self._run(self._transfer, uids, dest, True).addCallback(objectid.carry, dest, ids)

    async def _transfer(self, uids: list[int], dest: IFolder,
                        move: bool) -> list[tuple[int, int]]:
        if not isinstance(dest, MaildirFolder) or dest._gone:
            raise NoSuchFolder(getattr(dest, "name", repr(dest)))
        if self._index.unknown_dates:
            await self._dates.read(uids)  # copies keep the date: no stat each here
        pairs, missed = await self._transfer_once(uids, dest, move)
        if missed:
            # Another program renamed (flagged) or removed these files meanwhile: learn
            # their names, then copy or move once more what is still there.
            await self._rescan.rescan(True)
            more, _ = await self._transfer_once([u for u in missed if u in self._index],
                                                dest, move)
            pairs = sorted(pairs + more)
        return pairs

    async def _transfer_once(self, uids: list[int], dest: MaildirFolder, move: bool,
                             ) -> tuple[list[tuple[int, int]], list[int]]:
        """One pass of COPY/MOVE: ([(uid, dest uid)], UIDs whose file was not under
        its indexed name)."""
        index = self._index
        needed: set[str] = set()
        for uid in set(uids):
            i = index.pos(uid)
            if i >= 0:
                needed.update(index.state_at(i).flags)
        await dest._kw.learn(needed)
        plan = []
        for uid in sorted(set(uids)):
            i = index.pos(uid)
            if i < 0:
                continue
            info, st, wrap = index.info_at(i), index.state_at(i), bool(index.wrap[i])
            base = unique_base(info.size, crlf_on_disk=not wrap)
            new_part = make_info(dest._kw.letters(info.flags, st.extra), in_new=True)
            plan.append((uid, info, wrap, base, new_part, self._index.relpath_at(i)))
        if not plan:
            return [], []
        ops = [(os.path.join(self._path, rel),
                os.path.join(dest._path, "new", filename(base, new_part)),
                base, int(info.internal_date), info.size, wrap)
               for _, info, wrap, base, new_part, rel in plan]
        bases = [base for _, _, _, base, _, _ in plan]
        syncer = self._store.syncer
        ticket: list[int] = []
        dest._handover.expect(bases)
        try:
            try:
                ok, got = await self._store.run_blocking(
                    transfer_files, ops, move, dest._path, dest._uids, ticket, syncer,
                    self._store.modes, self._uids)
            except BaseException:
                dest._handover.settle([(duid, None) for duid in ticket])
                raise
            settle, pairs, missed = [], [], []
            done = iter(got)
            for (uid, info, wrap, base, new_part, _), linked in zip(plan, ok, strict=True):
                if not linked:
                    missed.append(uid)
                    continue
                duid = next(done)
                settle.append((duid, dest._row(base, True, new_part, wrap, info.size,
                                               info.internal_date, duid)))
                pairs.append((uid, duid))
            await dest._handover.settle(settle)
        finally:
            dest._handover.unexpect(bases)
        if move:
            moved = [src for src, _ in pairs]
            self._expunged(moved)
        if not move or dest._account is not self._account:  # quota (maildir_quota)
            sizes = {uid: info.size for uid, info, _, _, _, _ in plan}
            copied = sum(sizes[src] for src, _ in pairs)
            await dest._account.charge(copied, len(pairs))
            if move:
                await self._account.charge(-copied, -len(pairs))
        return pairs, missed

    # -- listeners ----------------------------------------------------------------------

    def add_listener(self, listener: IFolderListener) -> None:
        self._listeners.add(listener)
        self._watch_if_listened()

    def remove_listener(self, listener: IFolderListener) -> None:
        self._listeners.remove(listener)
        if not len(self._listeners):
            self._unwatch()

    # -- changes made by other programs ----------------------------------------------------

    def _watch_if_listened(self) -> None:
        """Have the store's watcher report changes to new/ and cur/ while someone
        listens (DiskWatch)."""
        if len(self._listeners) and not self._gone:
            self._disk.start()

    @property
    def _watching(self) -> str | None:
        """How the watcher watches this folder ("inotify", "poll"), None if it does not."""
        return self._disk.mode

    def _watch_moved(self, mode: str) -> None:
        """From the watcher: it now watches this folder another way (its inotify watch
        broke)."""
        self._disk.moved(mode)

    def _unwatch(self) -> None:
        self._disk.stop()

    def _disk_event(self, event: tuple[str, str, int] | None) -> None:
        """From the watcher: (subdir, name, inotify mask) of a change to new/ or cur/,
        or None for "something may have changed" (DiskWatch.event)."""
        if not self._gone:
            self._disk.event(event)

    # -- the delivery API: what MaildirMessageWriter may use of a folder ------------------
    #
    # A writer links one tmp file into several folders in one thread hop (maildir_io.
    # deliver_files) and hands each folder its outcome. These names are that contract
    # inside the Maildir store; nothing else of the folder is the writer's business.

    @property
    def path(self) -> str:
        """The folder's directory (its new/ takes deliveries)."""
        return self._path

    async def learn_keywords(self, flags: Iterable[str]) -> None:
        """Give every keyword among ``flags`` a letter before a file name uses it."""
        await self._kw.learn(flags)

    def letters(self, flags: frozenset[str]) -> str:
        """The Maildir info letters of ``flags`` (after ``learn_keywords``)."""
        return self._kw.letters(flags)

    def delivery_uids(self) -> FolderUids:
        """The UID assigner a deliver_files job uses to give the copy its UID."""
        return self._uids

    def expect_files(self, bases: Iterable[str]) -> None:
        """These files are being linked in by a writer: a rescan meanwhile leaves them
        alone (the writer's thread numbers them)."""
        self._handover.expect(bases)

    def unexpect_files(self, bases: Iterable[str]) -> None:
        """The writer is done with these files (numbered, dropped, or handed over)."""
        self._handover.unexpect(bases)

    def settle_uids(self, items: Sequence[tuple[int, Row | None]]) -> defer.Deferred[None]:
        """The outcome of UIDs a writer's thread handed out (None: dropped); fires once
        each is visible (listeners told) or dropped."""
        return self._handover.settle(items)

    def number_later(self, rows: Sequence[Row]) -> None:
        """Durable copies that want no UID now (SMTP): numbered in the next batch; the
        writer ``expect_files``-ed them before linking."""
        self._numbering.delivered(rows, expected=True)

    # -- RFC 8474 / RFC 8514 ---------------------------------------------------------------

    @property
    def mailbox_id(self) -> str:
        """Dovecot's mailbox GUID (the ``G`` of dovecot-uidlist's header; every header we
        write has one), so ``doveadm mailbox status guid`` names the folder the same."""
        header = self._uids.uidlist.header
        if header is not None and header.guid:
            return header.guid.lower()
        return "V%d" % self.uid_validity  # a header Dovecot will recreate with a GUID

    def save_dates(self, uids: Iterable[int]) -> defer.Deferred[dict[int, float]]:
        return defer.Deferred.fromCoroutine(self._dates.save_dates(list(uids)))

    def fill_dates(self, uids: Iterable[int] | None = None) -> defer.Deferred[None]:
        """Fires once the date of every message (or of these UIDs) is known, read in
        bulk in a worker thread (at once when none is missing): for callers about to
        read many INTERNALDATEs, such as SEARCH or FETCH (IIndexedFolder)."""
        return self._dates.fill_dates(uids)

    # -- cached metadata -----------------------------------------------------------------

    def get_cached(self, uid: int, key: str) -> str | None:
        return self._cache.get(uid, key)

    def set_cached(self, uid: int, key: str, value: str) -> None:
        if uid in self._index:
            self._cache.set(uid, key, value)

    def _flush_cache(self) -> defer.Deferred[None]:
        """Write pending cache entries; the store calls this as it closes, so background
        date reading stops here too (it resumes on the next open)."""
        self._dates.stop()
        d = self._journal.write(closing=True)
        return d.addCallback(lambda _: self._cache.write())

    def _close_uids(self) -> defer.Deferred[None]:
        """Close the dovecot-uidlist fd the folder holds (see dovecot_uidlist), in a
        thread: it waits for the folder's thread mutex."""
        d = self._store.run_blocking(self._uids.close)
        d.addErrback(lambda f: self.log.failure("closing {path}'s uidlist failed", f,
                                                path=self._path))
        return d

    def _forget(self) -> defer.Deferred[None]:
        """The folder was deleted: tell listeners everything is gone. The Deferred
        fires once its uidlist fd is closed."""
        uids = list(self._index.uids)
        self._gone = True
        closed = self._close_uids()
        self._dates.stop()
        self._journal.forget()
        self._unwatch()
        self._index.clear()
        self._cache.forget()
        self._numbering.forget()
        self._listeners.expunged(self, uids)
        return closed
