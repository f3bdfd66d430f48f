"""Where a Maildir folder's UIDs come from: Dovecot's uidlist, under Dovecot's lock.

One ``FolderUids`` per open folder lives on the thread side. Every UID is given out
here, in a worker thread, holding the folder's thread mutex and then
``dovecot-uidlist.lock``, right after re-reading what other programs appended (or the
whole file if it was replaced). A name the uidlist already numbers keeps its UID, so
a file Dovecot saved or already saw is never renumbered; ours are always above every
UID in the file, so none is reused.

The folder's index (on the reactor thread) must show new UIDs in ascending order.
Every UID handed to it is therefore pushed, in ascending order and under the mutex,
onto ``handed``; the folder makes a UID visible only once every UID before it in that
queue has settled (added or dropped). ``UidList.handed`` remembers the highest one, and
a record at or below it for a file the index lacks gets a new UID (see UidList).

So, as in Dovecot's own sync, no UID of ours is handed out while a record another
program wrote below it is not: each hand-over first takes the records above
``UidList.handed`` that are not ours (``UidList.newcomers``: Dovecot's APPEND, or its
sync numbering a file it found), finds their files (``locate_files``) and pushes them
with ours, in ascending order; their rows wait in ``found`` for the folder's next
settle. A caller that later brings such a file itself (our own delivery that Dovecot
numbered first, or an adoption that listed the file before) gets the same UID back
(``inflight``, ``known``), never a new one.

Deliveries, COPY/MOVE and adoption call ``assign`` from the thread that linked the
files. Adoption of files that already have records (Dovecot's APPEND) needs no lock
and writes nothing (``lookup``). Everything here blocks: worker threads only.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar, cast

from mailhost.store._maildir import uidcache
from mailhost.store._maildir.dotlock import DotLock
from mailhost.store._maildir.dovecot_uidlist import UIDLIST_FILE, UidList
from mailhost.store._maildir.maildir_io import Located, locate_files, names_by_base
from mailhost.store.modes import PRIVATE, FileModes

CacheRow = tuple[int, float, int, bool]  # uid, date, size, wrap
T = TypeVar("T")


class FolderUids:
    """The thread side of one folder's UIDs (see the module docstring)."""

    def __init__(self, path: str, modes: FileModes = PRIVATE, fsync: bool = True,
                 lock_timeout: float | None = None) -> None:
        self.mutex = threading.RLock()  # the loader holds it across assign/cache
        self.modes = modes
        self.fsync = fsync
        self.lock_timeout = lock_timeout
        self.handed: deque[int] = deque()
        #: Rows of other programs' messages handed with ours (None: the file is gone),
        #: for the folder to settle (reactor thread: popleft).
        self.found: deque[tuple[int, Located | None]] = deque()
        #: base -> UID of those, until their UID has settled (then ``known`` tells).
        self.inflight: dict[str, int] = {}
        #: The UID the folder's index shows for a base name, or None (the folder sets
        #: it; a dict lookup on the reactor's index, atomic under the GIL).
        self.known: Callable[[str], int | None] = lambda base: None
        self.uidlist = UidList("", modes)
        self.set_path(path)

    def set_path(self, path: str) -> None:
        """The folder's directory moved (folder rename)."""
        self.path = path
        self.uidlist.path = os.path.join(path, UIDLIST_FILE)

    @property
    def cache_path(self) -> str:
        return os.path.join(self.path, uidcache.CACHE_FILE)

    def dotlock(self) -> DotLock:
        if self.lock_timeout is None:
            return DotLock(self.uidlist.path, self.modes)
        return DotLock(self.uidlist.path, self.modes, timeout=self.lock_timeout)

    def peek(self) -> int | None:
        """The lowest UID handed out and not yet settled (reactor thread)."""
        try:
            return self.handed[0]
        except IndexError:
            return None

    # -- worker threads ------------------------------------------------------------------

    def _prune(self) -> None:
        """Forget ``inflight`` entries whose UID has settled (the queue is ascending:
        everything below its head has)."""
        if not self.inflight:
            return
        head = self.peek()
        if head is None:
            self.inflight.clear()
        else:
            for base, uid in list(self.inflight.items()):
                if uid < head:
                    del self.inflight[base]

    def _kept(self, bases: Sequence[str]) -> set[str]:
        """Those of ``bases`` whose record is at or below ``handed`` because that
        UID already went to the index for this very file: they keep it."""
        ul = self.uidlist
        handed, get, inflight, known = ul.handed, ul.by_base.get, self.inflight, self.known
        self._prune()
        return {b for b in bases if (u := get(b)) is not None and u <= handed
                and (inflight.get(b) == u or known(b) == u)}

    def _hand(self, bases: Sequence[str], uids: Sequence[int], ticket: list[int] | None,
              ) -> list[tuple[int, str]]:
        """Give UIDs to the index: ours, and the newcomers under them (see the module
        docstring), in ascending order, above everything handed before. With no
        ``ticket`` (the loader, which builds the index itself) the newcomers are
        returned instead."""
        ul = self.uidlist
        newcomers = ul.newcomers(set(bases))
        if ticket is None:
            return newcomers
        handed = ul.handed
        if newcomers:
            rows = locate_files(self.path, [b for _, b in newcomers])
            for uid, base in newcomers:
                self.inflight[base] = uid
                self.found.append((uid, rows.get(base)))
        fresh = sorted({u for u in uids if u > handed} | {u for u, _ in newcomers})
        self.handed.extend(fresh)
        ticket.extend(sorted(uids))
        if fresh:
            ul.handed = max(handed, fresh[-1])
        return newcomers

    def assign(self, bases: Sequence[str], ticket: list[int] | None,
               cache_rows: Sequence[tuple[float, int, bool]] | None = None,
               ) -> list[int]:
        """UIDs for files just linked into (or found in) this folder, in ``bases``
        order, recorded in dovecot-uidlist; handed to the index through ``ticket``
        (None at load: see ``assign_loading``). ``cache_rows`` (date, size, wrap per
        base) go to mailhost-uidcache."""
        return self._assign(bases, ticket, cache_rows)[0]

    def assign_loading(self, bases: Sequence[str],
                       ) -> tuple[list[int], list[tuple[int, Located]]]:
        """``assign`` for the loader, which builds the index itself: also returns the
        newcomers (uid, row) it must add, ascending (those whose file is gone are left
        out: their UIDs are simply never shown)."""
        if not bases:
            return [], []
        with self.mutex:
            uids, newcomers = self._assign(bases, None, None)
            if not newcomers:
                return uids, []
            rows = locate_files(self.path, [b for _, b in newcomers])
            return uids, [(u, rows[b]) for u, b in newcomers if b in rows]

    def _assign(self, bases: Sequence[str], ticket: list[int] | None,
                cache_rows: Sequence[tuple[float, int, bool]] | None,
                ) -> tuple[list[int], list[tuple[int, str]]]:
        if not bases:
            return [], []
        with self.mutex:
            ul = self.uidlist
            with self.dotlock():
                if not ul.refresh() and ul.header is None:
                    raise FileNotFoundError(ul.path)  # never loaded: the folder is gone
                uids, recreate = ul.assign(bases, self._kept(bases))
                ul.write(recreate, self.fsync)
            newcomers = self._hand(bases, uids, ticket)
            if cache_rows is not None:
                self._cache([(u, *row) for u, row in zip(uids, cache_rows, strict=True)])
            return uids, newcomers

    def lookup(self, bases: Sequence[str], ticket: list[int],
               cache_rows: Sequence[tuple[float, int, bool]] | None = None) -> list[int]:
        """Like ``assign``, but first without the lock: when another program already
        recorded every one of these names (above what the index has), nothing is
        written."""
        with self.mutex:
            ul = self.uidlist
            ul.refresh()
            handed = ul.handed
            found = [ul.by_base.get(b) for b in bases]
            kept = self._kept(bases) if any(u is not None and u <= handed
                                            for u in found) else ()
            if ul.exists and all(u is not None and (u > handed or b in kept)
                                 for u, b in zip(found, bases, strict=True)):
                known = cast(list[int], found)  # every one is recorded (checked above)
                self._hand(bases, known, ticket)
                if cache_rows is not None:
                    self._cache([(u, *r) for u, r in zip(known, cache_rows, strict=True)])
                return known
        return self.assign(bases, ticket, cache_rows)

    def locked(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn`` holding dovecot-uidlist.lock. Dovecot lists a folder for a full
        sync, and moves files new/ -> cur/, only while it holds that lock: a file being
        renamed during a listing may be missed by it, taken for expunged and, when
        seen again, numbered anew (maildir-sync.c: "If another process is rename()ing
        files while we are readdir()ing ..."; Dovecot then logs "Expunged message
        reappeared" or "Duplicate file entry"). So our renames and unlinks of message
        files, and our "is it really gone?" listings, take it too."""
        with self.mutex, self.dotlock():
            return fn(*args)

    def try_locked(self, fn: Callable[..., T], *args: object) -> tuple[bool, T | None]:
        """``locked`` without waiting, for a caller that must not block (the reactor
        thread): (False, None) when another thread holds the folder's mutex or
        another program dovecot-uidlist.lock; else (True, what ``fn`` returned)."""
        if not self.mutex.acquire(blocking=False):
            return False, None
        try:
            lock = self.dotlock()
            if not lock.try_acquire():
                return False, None
            try:
                return True, fn(*args)
            finally:
                lock.release()
        finally:
            self.mutex.release()

    def close(self) -> None:
        """Let go of the uidlist file held open (the folder is forgotten or the store
        closes); under the mutex, so no thread is reading through that fd."""
        with self.mutex:
            self.uidlist.close()

    def _cache(self, rows: Iterable[CacheRow]) -> None:
        try:
            uidcache.append(self.cache_path, self.uidlist.validity, rows, self.modes)
        except FileNotFoundError:
            pass  # the folder went away; the cache is only a cache

    def cache(self, rows: Iterable[CacheRow]) -> None:
        """Record facts (dates read later) in mailhost-uidcache."""
        with self.mutex:
            self._cache(rows)

    def next_uid_nowait(self) -> int:
        """UIDNEXT as the file says now (re-read if it changed; no dotlock), or 0 when
        another thread is busy with the uidlist (it will hand out what it finds)."""
        if not self.mutex.acquire(blocking=False):
            return 0
        try:
            if self.uidlist.header is None:
                return 0
            self.uidlist.refresh()
            return self.uidlist.next_uid
        finally:
            self.mutex.release()

    def compact(self, live: set[str]) -> int:
        """Recreate dovecot-uidlist without records of files that are gone (as Dovecot
        drops expunged records), keeping records above ``handed`` (files being saved
        by another program right now). Returns how many were dropped. The cache is
        compacted to the UIDs left."""
        with self.mutex:
            ul = self.uidlist
            with self.dotlock():
                ul.refresh()
                on_disk = set(names_by_base(self.path))
                on_disk |= live
                # Above ``handed``: being saved by another program; from the lowest UID
                # not settled yet: handed to the index, not in it yet (newcomers).
                head = self.peek()
                floor = ul.handed if head is None else min(ul.handed, head - 1)
                keep = on_disk | {b for b, u in ul.by_base.items() if u > floor}
                dropped = ul.recreate(self.fsync, keep)
            facts = uidcache.read(self.cache_path, ul.validity).facts_by_uid()
            left = set(ul.by_base.values())
            uidcache.rewrite(self.cache_path, ul.validity,
                             [(u, *f) for u, f in sorted(facts.items()) if u in left],
                             self.modes)
            return dropped
