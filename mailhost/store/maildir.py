"""MaildirStore: the durable store, Maildir++ on disk, readable by Dovecot and mutt.

Layout: ``<root>/<domain>/<localpart>/`` is a user's Maildir (INBOX); folder ``A.B``
is ``.A.B`` beside it. Files are stored CRLF (like Dovecot's mail_save_crlf=yes) and
named ``<sec>.M<usec>P<pid>Q<n>.<host>,S=<size>,W=<size>:2,<flags>``.

Each opened folder keeps an in-memory index (UID -> file) built from the append-only
``mailhost-uidlist`` plus one listdir of new/ and cur/, so ``messages()`` never
touches a file. All disk work runs in the reactor's thread pool; the reactor thread
only formats names and updates the index.

Delivery: the writer streams into ``<root>/.tmp/`` (writes hit the page cache, so they
may run on the reactor thread); commit fdatasyncs it, hard-links it into every target's
new/, appends the uidlist lines and then fsyncs the directories through a group
commit shared by concurrent deliveries. The Deferred fires only after that.

UIDs are reserved on the reactor thread in order and a message only becomes visible
once every lower reserved UID is settled, so sessions never see UIDs go backwards.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from mailhost.store import maildir_cache, uidlist
from mailhost.store.crlf import CRLFNormalizer, CRLFReader, crlf_size
from mailhost.store.flags import apply_mode, normalize_flags
from mailhost.store.groupsync import GroupSync
from mailhost.store.interfaces import (
    DEFAULT_SPECIAL_FOLDERS,
    DeliveryTarget,
    FolderExists,
    IFolder,
    IMailAccount,
    IMailStore,
    IMessageWriter,
    InvalidFolderName,
    MessageInfo,
    NoSuchFolder,
    NoSuchMessage,
    StoreError,
)
from mailhost.store.listeners import ListenerSet
from mailhost.store.maildir_names import (
    KEYWORDS_FILE,
    Keywords,
    filename,
    info_letters,
    make_info,
    sizes_from_base,
    split_name,
    unique_base,
)
from mailhost.store.names import INBOX, canonical_folder, is_inferior, parents, split_user
from mailhost.store.uidlist import UIDLIST_FILE, Record, new_uid_validity

SUBSCRIPTIONS_FILE = "subscriptions"
SPECIAL_USE_FILE = "mailhost-special-use"
TMP_DIR = ".tmp"  # under the store root; a leading '.' can never be a domain
WRITE_BUFFER = 64 * 1024
CACHE_FLUSH_DELAY = 2.0
CACHE_FLUSH_BATCH = 2000
COMPACT_MIN_STALE = 1000


def _fdatasync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def _make_maildir(path: str, folder: bool) -> None:
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    if folder:  # Maildir++ marks subfolders so deliverers know they are folders
        open(os.path.join(path, "maildirfolder"), "a").close()


def _write_atomic(path: str, text: str, fsync: bool) -> None:
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(slots=True)
class _Entry:
    """Where one indexed message lives on disk."""

    base: str
    subdir: str  # "new" or "cur"
    info: str | None
    extra: str  # Maildir letters that map to no IMAP flag; kept across renames
    wrap: bool  # LF-only file from another program: serve through CRLFReader

    def relpath(self) -> str:
        return os.path.join(self.subdir, filename(self.base, self.info))


class _KeywordFile:
    """Writes a folder's dovecot-keywords in a thread, never an older map over a newer."""

    def __init__(self, keywords: Keywords) -> None:
        self.keywords = keywords
        self.snapshot = (keywords.version, keywords.serialize())
        self.written = keywords.version

    def changed(self) -> None:
        self.snapshot = (self.keywords.version, self.keywords.serialize())

    def write_if_needed(self, folder_path: str, lock: threading.Lock, fsync: bool) -> None:
        with lock:
            version, text = self.snapshot
            if version > self.written:
                _write_atomic(os.path.join(folder_path, KEYWORDS_FILE), text, fsync)
                self.written = version


@implementer(IMessageWriter)
class MaildirMessageWriter:
    """Implements: IMessageWriter. One tmp file, linked into every target on commit."""

    def __init__(self, store: MaildirStore) -> None:
        self._store = store
        self._norm = CRLFNormalizer()
        self.size = 0
        self._done = False
        self._path = os.path.join(store._tmp_dir(), unique_base(0).split(",")[0])
        self._file = open(self._path, "xb", buffering=WRITE_BUFFER)  # noqa: SIM115

    def write(self, data: bytes) -> None:
        if self._done:
            raise StoreError("write after commit/abort")
        out = self._norm.feed(data)
        self._file.write(out)
        self.size += len(out)

    def commit(self, targets: Sequence[DeliveryTarget]):
        if self._done:
            return defer.fail(StoreError("commit after commit/abort"))
        self._done = True
        return defer.Deferred.fromCoroutine(self._commit(list(targets)))

    async def _commit(self, targets: list[DeliveryTarget]) -> list[int]:
        store = self._store
        try:
            self._file.flush()
            folders = [await store._folder(t.user, t.folder) for t in targets]
        except BaseException:
            self._discard()
            raise
        plan = []
        now = int(time.time())
        try:
            for folder, target in zip(folders, targets, strict=True):
                flags = normalize_flags(target.flags)
                letters = folder._letters(flags)
                base = unique_base(self.size)
                info = make_info(letters, in_new=True)
                date = now if target.internal_date is None else int(target.internal_date)
                plan.append((folder, base, info, date, flags))
        except BaseException:
            self._discard()
            raise
        reserved = [(f, f._reserve(base)) for f, base, _, _, _ in plan]
        jobs = [(f._path, filename(base, info), Record(uid, date, self.size, False, base),
                 f._file_lock, f._kwfile)
                for (f, base, info, date, _), (_, uid) in zip(plan, reserved, strict=True)]
        first_date = targets[0].internal_date if targets else None
        try:
            await store._in_thread(_deliver_files, self._file, self._path, first_date, jobs,
                                   store.fsync)
            if store.fsync and jobs:
                paths = {os.path.join(p, "new") for p, *_ in jobs}
                paths |= {os.path.join(p, UIDLIST_FILE) for p, *_ in jobs}
                await store._sync.sync(paths)
        except BaseException:
            for folder, uid in reserved:
                folder._settle([(uid, None)])
            raise
        by_folder: dict[int, tuple[MaildirFolder, list]] = {}
        for (folder, base, info, date, flags), (_, uid) in zip(plan, reserved, strict=True):
            entry = _Entry(base, "new", info, "", False)
            info_obj = MessageInfo(uid, base, self.size, flags, float(date), True)
            by_folder.setdefault(id(folder), (folder, []))[1].append((uid, (entry, info_obj)))
        await defer.gatherResults([f._settle(items) for f, items in by_folder.values()],
                                  consumeErrors=True)
        return [uid for _, uid in reserved]

    def _discard(self) -> None:
        self._file.close()
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._discard()


def _deliver_files(file, tmp_path: str, date: float | None, jobs, fsync: bool) -> None:
    """Thread: make the tmp file durable, link it into each target, record its UID."""
    try:
        file.flush()
        if date is not None:
            os.utime(tmp_path, (date, date))
        if fsync:
            _fdatasync(file.fileno())
        for folder_path, name, record, lock, kwfile in jobs:
            kwfile.write_if_needed(folder_path, lock, fsync)
            dest = os.path.join(folder_path, "new", name)
            try:
                os.link(tmp_path, dest)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                _copy_durable(tmp_path, dest, fsync)
            with lock:
                uidlist.append(os.path.join(folder_path, UIDLIST_FILE), [record])
    finally:
        file.close()
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass


def _copy_durable(src: str, dest: str, fsync: bool) -> None:
    tmp = dest + ".copying"
    with open(src, "rb") as s, open(tmp, "xb") as d:
        shutil.copyfileobj(s, d, 1024 * 1024)
        if fsync:
            d.flush()
            _fdatasync(d.fileno())
    shutil.copystat(src, tmp)
    os.rename(tmp, dest)


def _link_or_copy(src: str, dest: str, fsync: bool) -> None:
    try:
        os.link(src, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        _copy_durable(src, dest, fsync)


@dataclass
class _Loaded:
    """What a folder load read from disk (built in a thread)."""

    validity: int
    uid_next: int
    records: dict[str, Record]
    lines: int
    listing: list[tuple[str, str]]
    keywords: str
    fresh: bool


def _load_folder(path: str, fsync: bool) -> _Loaded:
    """Thread: read uidlist and keywords, list new/ and cur/."""
    listing = []
    for sub in ("new", "cur"):
        try:
            names = os.listdir(os.path.join(path, sub))
        except FileNotFoundError:
            raise NoSuchFolder(path) from None
        listing.extend((sub, n) for n in names if not n.startswith("."))
    try:
        with open(os.path.join(path, KEYWORDS_FILE), encoding="utf-8") as f:
            keywords = f.read()
    except FileNotFoundError:
        keywords = ""
    found = uidlist.read(os.path.join(path, UIDLIST_FILE))
    if found is None:
        validity = new_uid_validity()
        uidlist.rewrite(os.path.join(path, UIDLIST_FILE), validity, 1, [], fsync)
        return _Loaded(validity, 1, {}, 0, listing, keywords, True)
    validity, uid_next, records, lines = found
    return _Loaded(validity, uid_next, records, lines, listing, keywords, False)


def _examine_foreign(path: str, files: list[tuple[str, str]]):
    """Thread: size (CRLF), on-disk CRLF-ness and mtime of files other programs dropped."""
    out = []
    for sub, name in files:
        full = os.path.join(path, sub, name)
        base, _ = split_name(name)
        s, w = sizes_from_base(base)
        try:
            mtime = os.stat(full).st_mtime
            if s is not None and w is not None:
                size, wrap = w, s != w
            else:
                size, raw = crlf_size(full)
                wrap = size != raw
        except FileNotFoundError:
            continue
        out.append((sub, name, size, wrap, int(mtime)))
    out.sort(key=lambda t: (t[4], t[1]))
    return out


@implementer(IFolder)
class MaildirFolder:
    """Implements: IFolder. The live, indexed view of one Maildir++ folder."""

    log = Logger()

    def __init__(self, account: MaildirAccount, name: str, path: str) -> None:
        self._account = account
        self._store = account._store
        self.name = name
        self._path = path
        self.uid_validity = 0
        self.uid_next = 1
        self._entries: dict[int, _Entry] = {}
        self._infos: dict[int, MessageInfo] = {}
        self._by_base: dict[str, int] = {}
        self._keywords = Keywords()
        self._kwfile = _KeywordFile(self._keywords)
        self._listeners = ListenerSet()
        self._lock = defer.DeferredLock()  # serialises renames/unlinks/scans
        self._file_lock = threading.Lock()  # uidlist/keywords/cache files, in threads
        self._reserved: deque[int] = deque()
        self._settled: dict[int, tuple[_Entry, MessageInfo] | None] = {}
        self._waiting: dict[int, defer.Deferred] = {}
        self._pending_bases: set[str] = set()
        self._reserved_base: dict[int, str] = {}
        self._stale = 0
        self._cache: dict[int, dict[str, str]] = {}
        self._cache_pending: list[tuple[int, str, str]] = []
        self._cache_call = None
        self._gone = False

    @property
    def special_use(self) -> str | None:
        return self._account._special.get(self.name)

    # -- loading -------------------------------------------------------------------

    async def _load(self) -> None:
        loaded = await self._store._in_thread(_load_folder, self._path, self._store.fsync)
        self.uid_validity = loaded.validity
        self.uid_next = loaded.uid_next
        self._keywords = Keywords.parse(loaded.keywords)
        self._kwfile = _KeywordFile(self._keywords)
        foreign = []
        seen: dict[str, tuple[str, str]] = {}
        for sub, name in loaded.listing:
            base, info = split_name(name)
            if base in seen and seen[base][0] == "cur":
                continue  # crash mid new->cur rename left both; cur/ wins
            seen[base] = (sub, name)
        rows = []
        for base, (sub, name) in seen.items():
            rec = loaded.records.get(base)
            if rec is None:
                foreign.append((sub, name))
            else:
                rows.append((rec, sub, split_name(name)[1]))
        rows.sort(key=lambda r: r[0].uid)
        for rec, sub, info in rows:
            self._insert(rec.uid, self._entry_info(rec.base, sub, info, rec.wrap, rec.size,
                                                   rec.date))
        self._stale = loaded.lines - len(rows)
        cache, cache_lines = await self._store._in_thread(
            maildir_cache.read, os.path.join(self._path, maildir_cache.CACHE_FILE),
            self.uid_validity, set(self._entries))
        self._cache = cache
        if cache_lines > 2 * sum(len(v) for v in cache.values()) + COMPACT_MIN_STALE:
            await self._store._in_thread(self._rewrite_cache, dict(cache))
        if self._stale > max(COMPACT_MIN_STALE, len(self._entries)):
            await self._compact()
        if foreign:
            await self._adopt(foreign)

    def _entry_info(self, base: str, sub: str, info: str | None, wrap: bool, size: int,
                    date: float, uid: int = 0) -> tuple[_Entry, MessageInfo]:
        flags, extra = self._keywords.flags_of(info_letters(info))
        entry = _Entry(base, sub, info, extra, wrap)
        return entry, MessageInfo(uid, base, size, flags, float(date), sub == "new")

    def _insert(self, uid: int, pair: tuple[_Entry, MessageInfo]) -> MessageInfo:
        entry, info = pair
        if info.uid != uid:
            info = replace(info, uid=uid)
        self._entries[uid] = entry
        self._infos[uid] = info
        self._by_base[entry.base] = uid
        return info

    def _remove(self, uids: Iterable[int]) -> None:
        for uid in uids:
            entry = self._entries.pop(uid, None)
            if entry is None:
                continue
            del self._infos[uid]
            self._by_base.pop(entry.base, None)
            self._cache.pop(uid, None)
            self._stale += 1

    # -- UID reservation: visible strictly in UID order -------------------------------

    def _reserve(self, base: str) -> int:
        uid = self.uid_next
        self.uid_next += 1
        self._reserved.append(uid)
        self._reserved_base[uid] = base
        self._pending_bases.add(base)
        return uid

    def _settle(self, items: Sequence[tuple[int, tuple[_Entry, MessageInfo] | None]]
                ) -> defer.Deferred:
        """Record the outcome of reservations (None: dropped). Fires once every one of
        them is visible or dropped; listeners hear of each visible batch at once."""
        waits = []
        for uid, pair in items:
            d = self._waiting[uid] = defer.Deferred()
            waits.append(d)
            self._settled[uid] = pair
        added, fire = [], []
        while self._reserved and self._reserved[0] in self._settled:
            done = self._reserved.popleft()
            got = self._settled.pop(done)
            self._pending_bases.discard(self._reserved_base.pop(done))
            if got is not None and not self._gone:
                added.append(self._insert(done, got))
            waiter = self._waiting.pop(done, None)
            if waiter is not None:
                fire.append(waiter)
        self._listeners.added(self, added)
        for waiter in fire:
            waiter.callback(None)
        return defer.gatherResults(waits)

    # -- keywords ---------------------------------------------------------------------

    def _letters(self, flags: frozenset[str], extra: str = "") -> str:
        """Maildir letters for flags, assigning new keyword letters (file written later)."""
        if self._keywords.assign(f for f in flags if not f.startswith("\\")):
            self._kwfile.changed()
        return self._keywords.letters_of(flags, extra)

    # -- helpers -------------------------------------------------------------------

    def _check(self) -> None:
        if self._gone:
            raise NoSuchFolder(self.name)

    async def _locked(self, fn, *args):
        await self._lock.acquire()
        try:
            self._check()
            return await fn(*args)
        finally:
            self._lock.release()

    def _run(self, fn, *args) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._locked(fn, *args))

    async def _compact(self) -> None:
        """Rewrite the uidlist without stale lines (in a thread, under the file lock)."""
        live = {e.base for e in self._entries.values()} | set(self._pending_bases)
        path, validity = os.path.join(self._path, UIDLIST_FILE), self.uid_validity
        first_unsettled = self.uid_next
        lock, fsync = self._file_lock, self._store.fsync

        def work():
            with lock:
                current = uidlist.read(path)
                if current is None:
                    return
                _, uid_next, records, _ = current
                # Keep what is live now, and whatever was reserved after this snapshot.
                keep = [r for r in records.values()
                        if r.base in live or r.uid >= first_unsettled]
                keep.sort(key=lambda r: r.uid)
                uidlist.rewrite(path, validity, max(uid_next, first_unsettled), keep, fsync)

        await self._store._in_thread(work)
        self._stale = 0

    # -- IFolder --------------------------------------------------------------------

    def messages(self) -> list[MessageInfo]:
        return list(self._infos.values())

    def get(self, uid: int) -> MessageInfo | None:
        return self._infos.get(uid)

    def refresh(self):
        return self._run(self._refresh)

    async def _refresh(self) -> None:
        known = {e.base: uid for uid, e in self._entries.items()}
        listing = await self._store._in_thread(_list_folder, self._path)
        seen: dict[str, tuple[str, str | None, str]] = {}
        for sub, name in listing:
            base, info = split_name(name)
            if base in seen and seen[base][0] == "cur":
                continue
            seen[base] = (sub, info, name)
        changed, foreign = [], []
        for base, (sub, info, name) in seen.items():
            uid = self._by_base.get(base)
            if uid is not None:
                entry = self._entries[uid]
                if entry.subdir != sub or entry.info != info:
                    old = self._infos[uid]
                    pair = self._entry_info(base, sub, info, entry.wrap, old.size,
                                            old.internal_date, uid)
                    new = self._insert(uid, pair)
                    if new.flags != old.flags:
                        changed.append(new)
            elif base not in self._pending_bases:
                foreign.append((sub, name))
        gone = sorted(uid for base, uid in known.items()
                      if base not in seen and self._by_base.get(base) == uid)
        self._remove(gone)
        self._listeners.expunged(self, gone)
        self._listeners.changed(self, changed)
        if foreign:
            await self._adopt(foreign)

    async def _adopt(self, foreign: list[tuple[str, str]]) -> None:
        """Give UIDs to files another program put in new/ or cur/."""
        for _, name in foreign:
            self._pending_bases.add(split_name(name)[0])
        try:
            examined = await self._store._in_thread(_examine_foreign, self._path, foreign)
        finally:
            for _, name in foreign:
                self._pending_bases.discard(split_name(name)[0])
        if not examined:
            return
        pairs = []
        for sub, name, size, wrap, mtime in examined:
            base, info = split_name(name)
            uid = self._reserve(base)
            pairs.append((uid, self._entry_info(base, sub, info, wrap, size, mtime, uid)))
        records = [Record(uid, int(info.internal_date), info.size, entry.wrap, entry.base)
                   for uid, (entry, info) in pairs]
        path, lock = os.path.join(self._path, UIDLIST_FILE), self._file_lock

        def work():
            with lock:
                uidlist.append(path, records)

        try:
            await self._store._in_thread(work)
        except BaseException:
            self._settle([(uid, None) for uid, _ in pairs])
            raise
        await self._settle(pairs)

    def open_message(self, uid: int):
        return defer.Deferred.fromCoroutine(self._open_message(uid))

    async def _open_message(self, uid: int):
        for attempt in range(2):
            entry = self._entries.get(uid)
            if entry is None or self._gone:
                raise NoSuchMessage(uid)
            try:
                raw = await self._store._in_thread(open, os.path.join(self._path,
                                                                      entry.relpath()), "rb")
            except FileNotFoundError:
                if attempt:
                    raise NoSuchMessage(uid) from None
                # A rename (flags, new->cur) may be in flight: wait for it, then retry.
                await self._lock.acquire()
                self._lock.release()
                continue
            return io.BufferedReader(CRLFReader(raw)) if entry.wrap else raw
        raise NoSuchMessage(uid)

    def set_flags(self, uids: Iterable[int], flags: Iterable[str], mode: str):
        try:
            wanted = normalize_flags(flags)
            apply_mode(frozenset(), wanted, mode)
        except StoreError:
            return defer.fail()
        return self._run(self._set_flags, list(uids), wanted, mode)

    async def _set_flags(self, uids: list[int], wanted: frozenset[str], mode: str):
        result: dict[int, MessageInfo] = {}
        renames, updates = [], []
        for uid in sorted(set(uids)):
            info = self._infos.get(uid)
            if info is None:
                continue
            new_flags = apply_mode(info.flags, wanted, mode)
            result[uid] = info
            if new_flags == info.flags:
                continue
            entry = self._entries[uid]
            new_info = make_info(self._letters(new_flags, entry.extra), entry.subdir == "new")
            renames.append((entry.relpath(), os.path.join(entry.subdir,
                                                          filename(entry.base, new_info))))
            updates.append((uid, new_info, new_flags))
        if not renames:
            return [result[u] for u in sorted(result)]
        ok = await self._store._in_thread(_rename_all, self._path, renames, self._kwfile,
                                          self._file_lock, self._store.fsync)
        changed = []
        for (uid, new_info, new_flags), done in zip(updates, ok, strict=True):
            if not done or uid not in self._entries:
                continue
            self._entries[uid].info = new_info
            info = self._infos[uid] = replace(self._infos[uid], flags=new_flags)
            result[uid] = info
            changed.append(info)
        self._listeners.changed(self, changed)
        return [result[u] for u in sorted(result)]

    def expunge(self, uids: Iterable[int] | None = None):
        return self._run(self._expunge, None if uids is None else set(uids))

    async def _expunge(self, among: set[int] | None):
        victims = sorted(uid for uid, info in self._infos.items()
                         if "\\Deleted" in info.flags and (among is None or uid in among))
        if not victims:
            return []
        paths = [os.path.join(self._path, self._entries[u].relpath()) for u in victims]
        await self._store._in_thread(_unlink_all, paths)
        self._remove(victims)
        self._listeners.expunged(self, victims)
        if self._stale > max(COMPACT_MIN_STALE, len(self._entries)):
            await self._compact()
        return victims

    def copy(self, uids: Iterable[int], dest: IFolder):
        return self._run(self._transfer, list(uids), dest, False)

    def move(self, uids: Iterable[int], dest: IFolder):
        return self._run(self._transfer, list(uids), dest, True)

    async def _transfer(self, uids: list[int], dest: MaildirFolder, move: bool):
        if not isinstance(dest, MaildirFolder) or dest._gone:
            raise NoSuchFolder(getattr(dest, "name", repr(dest)))
        plan = []
        for uid in sorted(set(uids)):
            info = self._infos.get(uid)
            if info is None:
                continue
            entry = self._entries[uid]
            base = unique_base(info.size, crlf_on_disk=not entry.wrap)
            letters = dest._letters(info.flags, entry.extra)
            plan.append((uid, info, entry, base, make_info(letters, in_new=True)))
        if not plan:
            return []
        reserved = [dest._reserve(base) for _, _, _, base, _ in plan]
        ops = [(os.path.join(self._path, entry.relpath()),
                os.path.join(dest._path, "new", filename(base, new_info)),
                Record(duid, int(info.internal_date), info.size, entry.wrap, base))
               for (uid, info, entry, base, new_info), duid in zip(plan, reserved, strict=True)]
        fsync = self._store.fsync
        try:
            ok = await self._store._in_thread(_transfer_files, ops, move, dest._path,
                                              dest._kwfile, dest._file_lock, fsync)
            if fsync:
                syncs = {os.path.join(dest._path, "new"), os.path.join(dest._path, UIDLIST_FILE)}
                if move:
                    syncs |= {os.path.join(self._path, e.subdir) for _, _, e, _, _ in plan}
                await self._store._sync.sync(syncs)
        except BaseException:
            dest._settle([(duid, None) for duid in reserved])
            raise
        settle, pairs, moved = [], [], []
        for (uid, info, entry, base, new_info), duid, done in zip(plan, reserved, ok,
                                                                  strict=True):
            if not done:
                settle.append((duid, None))
                continue
            new_entry = _Entry(base, "new", new_info, entry.extra, entry.wrap)
            new = MessageInfo(duid, base, info.size, info.flags, info.internal_date, True)
            settle.append((duid, (new_entry, new)))
            pairs.append((uid, duid))
            moved.append(uid)
        await dest._settle(settle)
        if move:
            self._remove(moved)
            self._listeners.expunged(self, moved)
        return pairs

    def claim_recent(self):
        return self._run(self._claim_recent)

    async def _claim_recent(self):
        recent = [uid for uid, e in self._entries.items() if e.subdir == "new"]
        if not recent:
            return set()
        renames, infos = [], []
        for uid in recent:
            entry = self._entries[uid]
            new_info = make_info(info_letters(entry.info), in_new=False)
            renames.append((entry.relpath(), os.path.join("cur", filename(entry.base,
                                                                          new_info))))
            infos.append(new_info)
        ok = await self._store._in_thread(_rename_all, self._path, renames, None, None, False)
        claimed = set()
        for uid, new_info, done in zip(recent, infos, ok, strict=True):
            if done and uid in self._entries:
                self._entries[uid].subdir = "cur"
                self._entries[uid].info = new_info
                self._infos[uid] = replace(self._infos[uid], recent=False)
                claimed.add(uid)
        return claimed

    def add_listener(self, listener) -> None:
        self._listeners.add(listener)

    def remove_listener(self, listener) -> None:
        self._listeners.remove(listener)

    def get_cached(self, uid: int, key: str) -> str | None:
        return self._cache.get(uid, {}).get(key)

    def set_cached(self, uid: int, key: str, value: str) -> None:
        if uid not in self._entries:
            return
        self._cache.setdefault(uid, {})[key] = value
        self._cache_pending.append((uid, key, value))
        if len(self._cache_pending) >= CACHE_FLUSH_BATCH:
            self._flush_cache()
        elif self._cache_call is None:
            self._cache_call = self._store._reactor.callLater(CACHE_FLUSH_DELAY,
                                                              self._flush_cache)

    def _flush_cache(self) -> defer.Deferred:
        if self._cache_call is not None and self._cache_call.active():
            self._cache_call.cancel()
        self._cache_call = None
        pending, self._cache_pending = self._cache_pending, []
        if not pending or self._gone:
            return defer.succeed(None)
        path = os.path.join(self._path, maildir_cache.CACHE_FILE)
        validity, lock = self.uid_validity, self._file_lock

        def work():
            with lock:
                maildir_cache.append(path, validity, pending)

        d = self._store._in_thread(work)
        d.addErrback(lambda f: self.log.failure("cache flush failed", f))
        return d

    def _rewrite_cache(self, cache: dict[int, dict[str, str]]) -> None:
        with self._file_lock:
            maildir_cache.rewrite(os.path.join(self._path, maildir_cache.CACHE_FILE),
                                  self.uid_validity, cache)

    def _forget(self) -> None:
        """The folder was deleted: tell listeners everything is gone."""
        uids = list(self._entries)
        self._gone = True
        self._entries.clear()
        self._infos.clear()
        self._by_base.clear()
        self._cache.clear()
        self._cache_pending.clear()
        self._listeners.expunged(self, uids)


def _list_folder(path: str) -> list[tuple[str, str]]:
    out = []
    for sub in ("new", "cur"):
        try:
            out.extend((sub, n) for n in os.listdir(os.path.join(path, sub))
                       if not n.startswith("."))
        except FileNotFoundError:
            raise NoSuchFolder(path) from None
    return out


def _rename_all(path: str, renames, kwfile, lock, fsync: bool) -> list[bool]:
    """Thread: rename files inside a folder; False where the file vanished."""
    if kwfile is not None:
        kwfile.write_if_needed(path, lock, fsync)
    ok = []
    for old, new in renames:
        try:
            os.rename(os.path.join(path, old), os.path.join(path, new))
            ok.append(True)
        except FileNotFoundError:
            ok.append(False)
    return ok


def _unlink_all(paths: list[str]) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def _transfer_files(ops, move: bool, dest_path: str, kwfile, lock, fsync: bool) -> list[bool]:
    """Thread: link (copy) or rename (move) files into dest/new and record their UIDs."""
    kwfile.write_if_needed(dest_path, lock, fsync)
    ok, records = [], []
    for src, dst, record in ops:
        try:
            if move:
                os.rename(src, dst)
            else:
                _link_or_copy(src, dst, fsync)
            ok.append(True)
            records.append(record)
        except FileNotFoundError:
            ok.append(False)
    if records:
        with lock:
            uidlist.append(os.path.join(dest_path, UIDLIST_FILE), records)
    return ok


@implementer(IMailAccount)
class MaildirAccount:
    """Implements: IMailAccount over one user's Maildir++ root."""

    def __init__(self, store: MaildirStore, user: str, root: str) -> None:
        self._store = store
        self.user = user
        self._root = root
        self._folders: dict[str, MaildirFolder] = {}
        self._opening: dict[str, list[defer.Deferred]] = {}
        self._special: dict[str, str] = {}
        self._subs: set[str] = set()
        self._lock = defer.DeferredLock()  # serialises folder-tree changes

    def _dir(self, name: str) -> str:
        return self._root if name == INBOX else os.path.join(self._root, "." + name)

    async def _setup(self) -> None:
        self._special, self._subs = await self._store._in_thread(
            _setup_account, self._root, self._store.fsync)

    async def _folder(self, name: str) -> MaildirFolder:
        canon = canonical_folder(name)
        folder = self._folders.get(canon)
        if folder is not None:
            return folder
        if canon in self._opening:
            d: defer.Deferred = defer.Deferred()
            self._opening[canon].append(d)
            return await d
        self._opening[canon] = []
        folder = MaildirFolder(self, canon, self._dir(canon))
        try:
            await folder._load()
        except BaseException as e:
            waiters = self._opening.pop(canon)
            for d in waiters:
                d.errback(NoSuchFolder(canon) if isinstance(e, NoSuchFolder) else e)
            if isinstance(e, NoSuchFolder):
                raise NoSuchFolder(canon) from None
            raise
        self._folders[canon] = folder
        for d in self._opening.pop(canon):
            d.callback(folder)
        return folder

    def _tree(self, fn, *args) -> defer.Deferred:
        async def run():
            await self._lock.acquire()
            try:
                return await fn(*args)
            finally:
                self._lock.release()

        return defer.Deferred.fromCoroutine(run())

    def list_folders(self):
        async def run():
            names = await self._store._in_thread(_list_folder_names, self._root)
            return [INBOX, *sorted(names)]

        return defer.Deferred.fromCoroutine(run())

    def open_folder(self, name: str):
        return defer.Deferred.fromCoroutine(self._folder(name))

    def create_folder(self, name: str, special_use: str | None = None):
        return self._tree(self._create, name, special_use)

    async def _create(self, name: str, special_use: str | None) -> None:
        canon = canonical_folder(name)
        paths = [(p, self._dir(p)) for p in [*parents(canon), canon]]
        await self._store._in_thread(_create_dirs, paths, canon)
        if special_use:
            self._special[canon] = special_use
            await self._save_special()

    async def _save_special(self) -> None:
        text = "".join(f"{n}\t{u}\n" for n, u in sorted(self._special.items()))
        await self._store._in_thread(_write_atomic, os.path.join(self._root, SPECIAL_USE_FILE),
                                     text, self._store.fsync)

    def delete_folder(self, name: str):
        return self._tree(self._delete, name)

    async def _delete(self, name: str) -> None:
        canon = canonical_folder(name)
        if canon == INBOX:
            raise InvalidFolderName("INBOX cannot be deleted")
        folder = self._folders.get(canon)
        if folder is not None:
            await folder._lock.acquire()
        try:
            await self._store._in_thread(_delete_dir, self._dir(canon), self._root, canon)
        finally:
            if folder is not None:
                self._folders.pop(canon, None)
                folder._forget()
                folder._lock.release()
        if self._special.pop(canon, None) is not None:
            await self._save_special()

    def rename_folder(self, old: str, new: str):
        return self._tree(self._rename, old, new)

    async def _rename(self, old: str, new: str) -> None:
        src, dst = canonical_folder(old), canonical_folder(new)
        if dst == src or is_inferior(dst, src):
            raise InvalidFolderName(f"cannot rename {src} into itself")
        if src == INBOX:
            inbox = await self._folder(INBOX)
            await self._create(dst, None)
            target = await self._folder(dst)
            await inbox.move([i.uid for i in inbox.messages()], target)
            return
        existing = await self._store._in_thread(_list_folder_names, self._root)
        if src not in existing:
            raise NoSuchFolder(src)
        if dst in existing:
            raise FolderExists(dst)
        moving = [n for n in existing if n == src or is_inferior(n, src)]
        plan = [(n, dst + n[len(src):]) for n in moving]
        locked = [self._folders[n] for n, _ in plan if n in self._folders]
        for folder in locked:
            await folder._lock.acquire()
        try:
            await self._store._in_thread(
                _rename_dirs, [(self._dir(a), self._dir(b)) for a, b in plan],
                [(p, self._dir(p)) for p in parents(dst)])
            for a, b in plan:
                folder = self._folders.pop(a, None)
                if folder is not None:
                    folder.name, folder._path = b, self._dir(b)
                    self._folders[b] = folder
                if a in self._special:
                    self._special[b] = self._special.pop(a)
        finally:
            for folder in locked:
                folder._lock.release()
        await self._save_special()

    def subscriptions(self):
        return defer.succeed(set(self._subs))

    def subscribe(self, name: str):
        return self._tree(self._set_subscribed, name, True)

    def unsubscribe(self, name: str):
        return self._tree(self._set_subscribed, name, False)

    async def _set_subscribed(self, name: str, on: bool) -> None:
        canon = canonical_folder(name)
        subs = self._subs | {canon} if on else self._subs - {canon}
        if subs == self._subs:
            return
        text = "".join(f"{n}\n" for n in sorted(subs))
        await self._store._in_thread(_write_atomic, os.path.join(self._root, SUBSCRIPTIONS_FILE),
                                     text, self._store.fsync)
        self._subs = subs


def _setup_account(root: str, fsync: bool) -> tuple[dict[str, str], set[str]]:
    """Thread: create the Maildir and default folders on first use; read metadata."""
    _make_maildir(root, folder=False)
    special_path = os.path.join(root, SPECIAL_USE_FILE)
    subs_path = os.path.join(root, SUBSCRIPTIONS_FILE)
    if not os.path.exists(special_path):
        for name in DEFAULT_SPECIAL_FOLDERS:
            _make_maildir(os.path.join(root, "." + name), folder=True)
        if not os.path.exists(subs_path):
            _write_atomic(subs_path, "".join(f"{n}\n" for n in [INBOX,
                                                                *DEFAULT_SPECIAL_FOLDERS]),
                          fsync)
        _write_atomic(special_path, "".join(f"{n}\t{u}\n"
                                            for n, u in DEFAULT_SPECIAL_FOLDERS.items()), fsync)
    special = {}
    with open(special_path, encoding="utf-8") as f:
        for line in f:
            name, _, use = line.rstrip("\n").partition("\t")
            if name and use:
                special[name] = use
    subs = set()
    try:
        with open(subs_path, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if not line or line.startswith("V\t"):
                    continue  # Dovecot 2.3's versioned header
                try:
                    subs.add(canonical_folder(line.replace("\t", ".")))
                except InvalidFolderName:
                    continue
    except FileNotFoundError:
        pass
    return special, subs


def _list_folder_names(root: str) -> list[str]:
    names = []
    with os.scandir(root) as it:
        for d in it:
            if not d.name.startswith(".") or d.name in (".", "..") or not d.is_dir():
                continue
            try:
                canon = canonical_folder(d.name[1:])
            except InvalidFolderName:
                continue  # ..deleted leftovers, foreign junk
            if canon != INBOX and canon == d.name[1:]:
                names.append(canon)
    return names


def _create_dirs(paths: list[tuple[str, str]], target: str) -> None:
    for name, path in paths:
        if name == target:
            if name == INBOX or os.path.isdir(path):
                raise FolderExists(name)
        if not os.path.isdir(path):
            _make_maildir(path, folder=True)


def _delete_dir(path: str, root: str, name: str) -> None:
    if not os.path.isdir(path):
        raise NoSuchFolder(name)
    # Rename first so a crash mid-delete never leaves a half-deleted, listed folder.
    trash = os.path.join(root, f"..deleted.{os.getpid()}.{threading.get_ident()}.{time.time()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _rename_dirs(renames: list[tuple[str, str]], parent_dirs: list[tuple[str, str]]) -> None:
    for _, path in parent_dirs:
        if not os.path.isdir(path):
            _make_maildir(path, folder=True)
    for old, new in renames:
        if os.path.exists(new):
            raise FolderExists(os.path.basename(new)[1:])
        os.rename(old, new)


@implementer(IMailStore)
class MaildirStore:
    """Implements: IMailStore on a Maildir++ tree at ``root``."""

    log = Logger()

    def __init__(self, root: str, fsync: bool = True, reactor=None) -> None:
        self.root = os.path.abspath(root)
        self.fsync = fsync
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._accounts: dict[str, MaildirAccount] = {}
        self._opening: dict[str, list[defer.Deferred]] = {}
        self._sync = GroupSync(self._in_thread)
        self._tmp_ready = False

    def _in_thread(self, fn, *args) -> defer.Deferred:
        return threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), fn,
                                         *args)

    def _tmp_dir(self) -> str:
        path = os.path.join(self.root, TMP_DIR)
        if not self._tmp_ready:
            os.makedirs(path, exist_ok=True)
            self._tmp_ready = True
        return path

    def _user_root(self, user: str) -> str:
        local, domain = split_user(user)
        return os.path.join(self.root, domain, local)

    async def _account(self, user: str) -> MaildirAccount:
        account = self._accounts.get(user)
        if account is not None:
            return account
        root = self._user_root(user)
        if user in self._opening:
            d: defer.Deferred = defer.Deferred()
            self._opening[user].append(d)
            return await d
        self._opening[user] = []
        account = MaildirAccount(self, user, root)
        try:
            await account._setup()
        except BaseException as e:
            for d in self._opening.pop(user):
                d.errback(e)
            raise
        self._accounts[user] = account
        for d in self._opening.pop(user):
            d.callback(account)
        return account

    async def _folder(self, user: str, name: str) -> MaildirFolder:
        account = await self._account(user)
        return await account._folder(name)

    def open_account(self, user: str):
        return defer.Deferred.fromCoroutine(self._account(user))

    def new_message(self) -> MaildirMessageWriter:
        return MaildirMessageWriter(self)

    def close(self):
        flushes = [f._flush_cache() for a in self._accounts.values()
                   for f in a._folders.values()]
        return defer.gatherResults(flushes, consumeErrors=True).addCallback(lambda _: None)
