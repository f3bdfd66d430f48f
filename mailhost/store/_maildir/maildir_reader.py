"""FolderReader: a Maildir folder's message files opened for reading.

A message is read under the name the index has for it. That name can be out of date
for a moment: a rename of ours (a flag change, a \\Recent claim moving it new/ ->
cur/) running in a thread, or another program's rename or unlink. The reader then
takes the new name of our rename in flight (``FolderIndex.renaming``), waits for our
renames to finish, and at last has the folder list its directories once; a file really
gone is NoSuchMessage. Files stored with bare LF are read through CRLFReader.

The open itself happens on the reactor thread: a read-only open of an existing file
is a path lookup in the dentry cache, cheaper than a thread hop. Header blocks of many
messages are read in one thread job (maildir_headers).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, TypeVar

from twisted.internet import defer

from mailhost.message.crlf import CRLFReader
from mailhost.store._maildir.maildir_headers import HeaderJob, read_blocks
from mailhost.store._maildir.maildir_index import UNKNOWN_DATE, FolderIndex
from mailhost.store._maildir.maildir_names import filename
from mailhost.store._maildir.maildir_uids import FolderUids
from mailhost.store.interfaces import IMessageReader, NoSuchFolder, NoSuchMessage
from mailhost.store.reader import reader_for

_T = TypeVar("_T")


def _call_closing(fn: Callable[[BinaryIO], _T], f: BinaryIO) -> _T:
    """Run in a thread: ``fn(f)``, then ``f`` closed."""
    with f:
        return fn(f)


class FolderReader:
    """The reads of one MaildirFolder: open_message, read_message, read_headers (see
    the module docstring).

    Built with: ``run_blocking`` (the store's thread helper), ``uids`` (the folder's
    FolderUids, whose cache file records dates learnt on the way), ``index`` and
    ``path`` (the folder's current index and directory), ``lock`` (the folder lock,
    held by our renames in flight), ``relist`` (the folder's forced rescan under its
    lock: fails with NoSuchFolder once the folder is gone) and ``gone`` (whether the
    folder was deleted)."""

    def __init__(self, run_blocking: Callable[..., defer.Deferred[Any]], uids: FolderUids,
                 index: Callable[[], FolderIndex], path: Callable[[], str],
                 lock: defer.DeferredLock, relist: Callable[[], defer.Deferred[None]],
                 gone: Callable[[], bool]) -> None:
        self._run_blocking = run_blocking
        self._uids = uids
        self._index = index
        self._path = path
        self._lock = lock
        self._relist = relist
        self._gone = gone

    def open_message(self, uid: int) -> defer.Deferred[BinaryIO]:
        return defer.Deferred.fromCoroutine(self.open(uid))

    def read_message(self, uid: int, offset: int = 0,
                     length: int | None = None) -> defer.Deferred[IMessageReader]:
        index = self._index()
        i = index.pos(uid)
        size = index.sizes[i] if i >= 0 else 0
        d = self.open_message(uid)
        return d.addCallback(lambda f: reader_for(f, size, offset, length,
                                                  run=self._run_blocking))

    async def open(self, uid: int) -> BinaryIO:
        """The message's file, open for reading (CRLF line ends)."""
        for attempt in range(3):
            index = self._index()
            i = index.pos(uid)
            if i < 0 or self._gone():
                raise NoSuchMessage(uid)
            path = os.path.join(self._path(), index.relpath_at(i))
            wrap = index.wrap[i]
            try:
                # A read-only open of an existing file is a path lookup in the dentry
                # cache (no journal, no data I/O): cheaper here than a thread hop, which
                # cost more than the whole read of a typical message. Reads stay bounded
                # and are the caller's business (thread pool or small chunks).
                raw = open(path, "rb")  # noqa: SIM115 - the caller closes it
            except FileNotFoundError:
                moving = index.renaming.get(index.keys[i])
                if moving is not None:
                    # A rename of ours (flags, new/ -> cur/) is in flight in a thread and
                    # has happened: the new name, at once. (Issue 16: under the 10-client
                    # load a third of FETCH BODY[HEADER]s of a just-appended message
                    # met another session's \Recent claim and waited for the folder
                    # lock, 3.5 ms median, behind every pass queued on it.)
                    try:
                        raw = open(os.path.join(self._path(), moving), "rb")  # noqa: SIM115
                    except FileNotFoundError:
                        pass
                    else:
                        return io.BufferedReader(CRLFReader(raw)) if wrap else raw
                if attempt == 0:
                    # A rename of ours (flags, new/ -> cur/) may be in flight: let it
                    # finish, retry.
                    await self._lock.acquire()
                    self._lock.release()
                elif attempt == 1:
                    # Another program renamed it (set a flag, moved it to cur/) or
                    # deleted it: one listing finds it by its base name (and tells the
                    # listeners what changed); a file really gone leaves the index.
                    try:
                        await self._relist()
                    except NoSuchFolder:
                        raise NoSuchMessage(uid) from None
                continue
            return io.BufferedReader(CRLFReader(raw)) if wrap else raw
        raise NoSuchMessage(uid)

    def read_headers(self, uids: Sequence[int], fn: Callable[[BinaryIO], _T],
                     ) -> defer.Deferred[list[tuple[int, _T]]]:
        """IHeaderBlocks: a batch of header blocks in one thread job (maildir_headers)."""
        return defer.Deferred.fromCoroutine(self._read_headers(uids, fn))

    async def _read_headers(self, uids: Sequence[int], fn: Callable[[BinaryIO], _T],
                            ) -> list[tuple[int, _T]]:
        index = self._index()
        if self._gone():
            return []
        jobs: list[HeaderJob] = []
        facts: dict[int, tuple[int, bool]] = {}  # uid -> (size, wrap) of unknown dates
        for uid in uids:
            i = index.pos(uid)
            if i >= 0:
                st, wrap = index.state_at(i), bool(index.wrap[i])
                unknown = index.dates[i] == UNKNOWN_DATE
                jobs.append((uid, "new" if st.recent else "cur",
                             filename(index.keys[i], st.part), wrap, unknown))
                if unknown:
                    facts[uid] = (index.sizes[i], wrap)
        path, uid_files = self._path(), self._uids

        def work() -> tuple[list[tuple[int, _T]], list[int], list[tuple[int, float]]]:
            out, missing, dates = read_blocks(path, jobs, fn)
            if dates:
                # Dates learnt on the way (fstat of the open file), recorded as the
                # background date pass would, which then has none of them to stat.
                try:
                    uid_files.cache([(uid, date, *facts[uid]) for uid, date in dates])
                except OSError:
                    pass  # only a cache: a restart reads these dates again
            return out, missing, dates

        got: tuple[list[tuple[int, _T]], list[int], list[tuple[int, float]]] = \
            await self._run_blocking(work)
        out, missing, dates = got
        if index is self._index():
            for uid, date in dates:
                index.set_date(uid, date)
        if missing:
            for uid in missing:  # renamed or gone meanwhile: the careful way
                try:
                    f = await self.open(uid)
                except NoSuchMessage:
                    continue
                out.append((uid, await self._run_blocking(_call_closing, fn, f)))
            order = {uid: n for n, uid in enumerate(uids)}
            out.sort(key=lambda row: order[row[0]])
        return out
