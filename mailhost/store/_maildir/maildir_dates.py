"""FolderDates: the message dates a Maildir folder's index does not hold yet.

Bulk adoption (maildir_index.load_folder) indexes files without a stat each, so their
INTERNALDATE (the file's mtime) is UNKNOWN_DATE until read. Three readers here:

- the background pass (``schedule``/``fill``), a batch at a time in a thread after
  the first burst of client commands, recording what it reads in mailhost-uidcache so
  a restart needs no stat either;
- ``read``, for a caller about to need many dates at once (SEARCH, FETCH, COPY, a
  STORE's results), one thread pass instead of a stat per message on the reactor;
- ``save_dates``, RFC 8514's SAVEDATE: the file's ctime, kept in the folder cache.

It owns only the background pass's timer; the index, the folder lock and the folder
cache stay the folder's, reached through the callables it is built with.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mailhost.store._maildir.maildir_index import UNKNOWN_DATE, FolderIndex, name_time
from mailhost.store._maildir.maildir_uids import FolderUids
from mailhost.store.interfaces import NoSuchFolder

#: Bulk-adopted files get their real dates this long after the folder opens, in
#: batches (thread work that would otherwise compete with the first SELECT/FETCH).
DATE_FILL_DELAY = 5.0
DATE_FILL_BATCH = 5000
#: The folder-cache key of a message's RFC 8514 save date (whole POSIX seconds).
SAVE_DATE_KEY = "savedate"


class FolderDates:
    """The date reads of one MaildirFolder (see the module docstring).

    Built with: ``reactor`` (the pass's timer), ``run_blocking`` (the store's thread
    helper), ``uids`` (the folder's FolderUids, whose cache file records dates),
    ``index`` and ``path`` (the folder's current index and directory), ``run`` (runs
    a coroutine function under the folder lock, failing with NoSuchFolder once it is
    gone), ``rescan`` (the folder's rescan, called with the lock held), ``refresh``
    (the folder's IFolder.refresh, takes the lock), ``get_cached``/``set_cached``
    (the folder cache) and ``gone`` (whether the folder was deleted)."""

    log = Logger()

    def __init__(self, reactor: IReactorTime,
                 run_blocking: Callable[..., defer.Deferred[Any]], uids: FolderUids,
                 index: Callable[[], FolderIndex], path: Callable[[], str],
                 run: Callable[..., defer.Deferred[Any]],
                 rescan: Callable[[], Awaitable[None]],
                 refresh: Callable[[], defer.Deferred[None]],
                 get_cached: Callable[[int, str], str | None],
                 set_cached: Callable[[int, str, str], None],
                 gone: Callable[[], bool]) -> None:
        self._reactor = reactor
        self._run_blocking = run_blocking
        self._uids = uids
        self._index = index
        self._path = path
        self._run = run
        self._rescan = rescan
        self._refresh = refresh
        self._get_cached = get_cached
        self._set_cached = set_cached
        self._gone = gone
        self._call: IDelayedCall | None = None  # the background pass's next batch

    # -- the background pass ---------------------------------------------------------

    def schedule(self, delay: float = DATE_FILL_DELAY) -> None:
        """Have the background pass run in ``delay`` seconds (unless it is due)."""
        if self._call is None and not self._gone():
            self._call = self._reactor.callLater(delay, self.fill)

    def stop(self) -> None:
        """Stop the background pass (the store closes, the folder is deleted); the
        next open of the folder starts it again."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def fill(self) -> defer.Deferred[None]:
        """Read the dates bulk adoption skipped, a batch at a time in a thread, and
        record them in mailhost-uidcache, so INTERNALDATE needs no stat later (even
        after a restart). Runs after the first burst of client commands, not during it;
        goes on at once only while a batch made progress."""
        self._call = None

        def next_batch(more: bool) -> None:
            if more:
                self.schedule(0)

        d = self._run(self._fill_batch).addCallback(next_batch)
        d.addErrback(lambda f: None if f.check(NoSuchFolder)
                     else self.log.failure("reading message dates failed", f))
        return d

    async def _fill_batch(self) -> bool:
        """One batch of the date pass; True if there is more to do and this batch got
        somewhere (a row it could not stat is looked for again after a refresh, then
        given its name's time, so it never comes back)."""
        index = self._index()
        before = index.unknown_dates + len(index.unsaved_dates)
        todo = index.unknown(DATE_FILL_BATCH)
        if not todo:
            return False
        path, uids = self._path(), self._uids

        def work(rows: list[tuple[int, str, int, bool, str, float]],
                 ) -> tuple[list[tuple[int, int]], list[int]]:
            dates: list[tuple[int, int]] = []
            facts: list[tuple[int, float, int, bool]] = []
            missing: list[int] = []
            for uid, rel, size, wrap, _base, date in rows:
                if date == UNKNOWN_DATE:
                    try:
                        mtime = int(os.stat(os.path.join(path, rel)).st_mtime)
                    except OSError:
                        missing.append(uid)  # renamed or deleted by another program
                        continue
                else:
                    mtime = int(date)
                dates.append((uid, mtime))
                facts.append((uid, mtime, size, wrap))
            if facts:
                uids.cache(facts)
            return dates, missing

        dates, missing = await self._run_blocking(work, todo)
        for uid, mtime in dates:
            index.set_date(uid, float(mtime))
        if missing:
            # Another program renamed (flags) or deleted them: learn the new names,
            # drop the gone, and try once more under the current names.
            await self._rescan()
            index = self._index()
            retry = []
            for uid in missing:
                i = index.pos(uid)
                if i >= 0 and index.dates[i] == UNKNOWN_DATE:
                    retry.append((uid, index.relpath_at(i), index.sizes[i],
                                  bool(index.wrap[i]), index.keys[i], UNKNOWN_DATE))
            if retry:
                dates, missing = await self._run_blocking(work, retry)
                for uid, mtime in dates:
                    index.set_date(uid, float(mtime))
                for uid in missing:  # still not found: racing; use the name's time
                    i = index.pos(uid)
                    if i >= 0:
                        index.set_date(uid, name_time(index.keys[i]))
        after = index.unknown_dates + len(index.unsaved_dates)
        return after > 0 and after < before

    # -- dates a caller needs now -------------------------------------------------------

    def fill_dates(self, uids: Iterable[int] | None = None) -> defer.Deferred[None]:
        """IIndexedFolder.fill_dates: ``read`` under the folder lock, or at once when
        no date is missing."""
        if not self._index().unknown_dates:
            return defer.succeed(None)
        return self._run(self.read, None if uids is None else list(uids))

    async def read(self, uids: Iterable[int] | None = None) -> None:
        """Read the still unknown dates of these messages (all if None) in one thread
        pass, so callers that need them do not stat file after file on the reactor.
        The background pass records them in mailhost-uidcache later. The caller holds
        the folder lock."""
        index = self._index()
        if uids is None:
            uids = [u for u, d in zip(index.uids, index.dates, strict=True)
                    if d == UNKNOWN_DATE]
        else:
            uids = list(uids)
        path = self._path()
        any_found = False

        def work(rows: list[tuple[int, str, str]]) -> list[tuple[int, float]]:
            found: list[tuple[int, float]] = []
            for uid, rel, _base in rows:
                try:
                    found.append((uid, float(int(os.stat(os.path.join(path, rel)).st_mtime))))
                except OSError:
                    pass  # renamed or gone: read on demand (FolderIndex.date_at)
            return found

        # A batch at a time: the paths of 100k messages at once were ~30 MB of the
        # server's peak (issue 16), for no gain over a few thread hops.
        for start in range(0, len(uids), DATE_FILL_BATCH):
            rows = index.unknown_rows(uids[start:start + DATE_FILL_BATCH])
            if not rows:
                continue
            found = await self._run_blocking(work, rows)
            del rows
            if index is not self._index():
                return
            for uid, date in found:
                i = index.pos(uid)
                if i >= 0 and index.dates[i] == UNKNOWN_DATE:
                    index.set_date(uid, date)
                    index.unsaved_dates.add(uid)
            any_found = any_found or bool(found)
        if any_found:
            self.schedule(DATE_FILL_DELAY)

    # -- RFC 8514 -----------------------------------------------------------------------

    async def save_dates(self, uids: list[int]) -> dict[int, float]:
        """Dovecot's maildir save date without its cache is the file's ctime
        (maildir-mail.c, maildir_mail_get_save_date); a flag change renames the file and
        so moves its ctime, so the first value read is kept in the folder's cache."""
        out: dict[int, float] = {}
        get_cached, set_cached = self._get_cached, self._set_cached
        for attempt in range(2):
            missing: list[tuple[int, str]] = []
            index = self._index()
            for uid in uids:
                got = get_cached(uid, SAVE_DATE_KEY)
                if got is not None:
                    out[uid] = float(got)
                elif uid in index:
                    missing.append((uid, index.relpath_at(index.pos(uid))))
            if not missing:
                break
            path = self._path()

            def work(missing: list[tuple[int, str]] = missing,
                     path: str = path) -> list[tuple[int, int]]:
                found: list[tuple[int, int]] = []
                for uid, rel in missing:
                    try:
                        found.append((uid, int(os.stat(os.path.join(path, rel)).st_ctime)))
                    except OSError:
                        pass  # renamed meanwhile: looked up again below
                return found

            found = await self._run_blocking(work)
            for uid, ctime in found:
                if get_cached(uid, SAVE_DATE_KEY) is None:
                    set_cached(uid, SAVE_DATE_KEY, str(ctime))
                out[uid] = float(get_cached(uid, SAVE_DATE_KEY) or ctime)
            if len(found) == len(missing) or attempt:
                break
            await self._refresh()  # a rename by another program: find the new names
        return out
