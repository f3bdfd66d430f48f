"""Noticing what other programs do to open Maildir folders: inotify, or polling.

Dovecot, mutt, procmail and maildrop change a Maildir behind our back: they drop
files into new/, rename ``x:2,`` to ``x:2,S`` to set a flag, move new/ to cur/ and
unlink. A ``MaildirFolder`` that someone listens to (a selected IMAP session, IDLE)
asks this watcher to tell it when new/ or cur/ change; the folder then decides, under
its lock and against its index, whether a rescan is needed (our own renames,
deliveries and expunges are already in the index and cost nothing).

Two ways, one per folder:

- **inotify** (``twisted.internet.inotify``), the default: one inotify descriptor per
  store (``fs.inotify.max_user_instances`` is only 128 per user), three watches per
  folder (new/, cur/, and the folder directory for ``dovecot-keywords``, which Dovecot
  replaces when it gives a keyword a letter), closed as soon as nothing is watched.
  Each event is handed to the folder with its file name; the folder coalesces them for
  ``COALESCE_DELAY``.
- **poll**, when configured, when inotify is missing, or when adding a watch fails
  (``ENOSPC``: ``max_user_watches`` reached): every ``POLL_INTERVAL`` one thread job
  stats new/, cur/ and dovecot-keywords of every polled folder; a folder whose times
  moved, or are too recent to trust (``MTIME_SETTLE``), gets a stamp-checked rescan
  (which re-reads dovecot-keywords if it changed). The interval is half a second so
  an IDLE client hears of a change within one second.

Twisted's ``INotify`` closes itself when a watched directory is deleted (another
program deleting a folder) and drops ``IN_Q_OVERFLOW`` (its watch id is -1): the
first is handled by building a new descriptor and telling every watched folder to
rescan once; the second only happens when the reactor stopped reading for thousands
of events, and the rescans on SELECT/EXAMINE/STATUS/NOOP/IDLE still catch up then.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from mailhost.store._maildir.maildir_index import MTIME_SETTLE
from mailhost.store._maildir.maildir_names import KEYWORDS_FILE

if TYPE_CHECKING:  # they import this module
    from mailhost.store._maildir.maildir_folder import MaildirFolder
    from mailhost.store.maildir import IStoreReactor

try:
    from twisted.internet import inotify as _inotify
except ImportError:  # not Linux: polling only
    HAVE_INOTIFY = False
else:
    HAVE_INOTIFY = True

#: Events of one folder are collected this long before the folder looks at them.
COALESCE_DELAY = 0.05
#: How often polled folders' directory times are checked.
POLL_INTERVAL = 0.5
#: At most this many reads of the inotify descriptor when draining it.
DRAIN_READS = 64

WATCH_MODES = ("inotify", "poll")

_R = TypeVar("_R")
#: An inotify watch's callback: (the name of the file the event is about, or "" for
#: the directory itself; the event's mask).
_Callback = Callable[[str, int], None]

if HAVE_INOTIFY:
    APPEARED = _inotify.IN_CREATE | _inotify.IN_MOVED_TO
    VANISHED = _inotify.IN_DELETE | _inotify.IN_MOVED_FROM
    _GONE_SELF = _inotify.IN_DELETE_SELF | _inotify.IN_MOVE_SELF | _inotify.IN_UNMOUNT
    _MASK = APPEARED | VANISHED | _GONE_SELF | _inotify.IN_ONLYDIR
    #: The folder directory itself: only dovecot-keywords being replaced matters
    #: (Dovecot writes it under a dotlock and renames it into place, as we do); new/
    #: and cur/ report the folder going away. Not IN_CREATE or IN_CLOSE_WRITE: every
    #: APPEND's uidlist dotlock, uidlist and UID-cache writes fired six of them, each a
    #: wakeup of the reactor while the thread doing the APPEND wanted the GIL (issue
    #: 16). A tool writing dovecot-keywords in place is read at the next rescan.
    _ROOT_MASK = _inotify.IN_MOVED_TO | _inotify.IN_ONLYDIR

    _EVENT = struct.Struct("=iIII")  # wd, mask, cookie, name length (inotify(7))

    class _Notifier(_inotify.INotify):
        """An INotify that says when it closed itself (a watched directory was deleted),
        and hands its callbacks the event's file name (str) and mask. Twisted's own
        ``_doRead`` builds a FilePath per event (normpath, abspath, two encodings):
        under load that was most of the reactor's time spent on a folder's events."""

        def __init__(self, reactor: IStoreReactor,
                     on_lost: Callable[[_Notifier], None]) -> None:
            super().__init__(reactor)  # type: ignore[no-untyped-call]  # unannotated in Twisted
            self.on_lost: Callable[[_Notifier], None] | None = on_lost

        def _doRead(self, in_: bytes) -> None:  # noqa: N802 - Twisted's name
            data = self._buffer + in_ if self._buffer else in_
            at, end, size = 0, len(data), _EVENT.size
            events: list[tuple[int, int, str]] = []
            while end - at >= size:
                wd, mask, _, length = _EVENT.unpack_from(data, at)
                if end - at < size + length:
                    break  # the rest of this event comes with the next read
                name = os.fsdecode(data[at + size:at + size + length].rstrip(b"\0"))
                at += size + length
                events.append((wd, mask, name))
            self._buffer = data[at:]  # consumed before any callback runs, as Twisted does
            for wd, mask, name in events:
                watch = self._watchpoints.get(wd)
                if watch is None:
                    continue  # IN_Q_OVERFLOW (wd -1), or a watch dropped meanwhile
                for callback in watch.callbacks:
                    callback(name, mask)
                if mask & _inotify.IN_DELETE_SELF:
                    self._rmWatch(wd)
                    self.loseConnection()

        def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
            super().connectionLost(reason)  # type: ignore[no-untyped-call]  # likewise
            on_lost, self.on_lost = self.on_lost, None
            if on_lost is not None:
                on_lost(self)
else:  # pragma: no cover - Linux has inotify
    APPEARED = VANISHED = 0


def dir_times(paths: list[str]) -> list[tuple[int, int, int] | None]:
    """(new/ mtime, cur/ mtime, dovecot-keywords mtime or 0) in ns of each folder,
    None where it is gone (thread)."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            new = os.stat(os.path.join(path, "new")).st_mtime_ns
            cur = os.stat(os.path.join(path, "cur")).st_mtime_ns
        except OSError:
            out.append(None)
            continue
        try:
            keywords = os.stat(os.path.join(path, KEYWORDS_FILE)).st_mtime_ns
        except OSError:
            keywords = 0
        out.append((new, cur, keywords))
    return out


class ChangeWatcher:
    """The watches of one store's listened-to folders (see the module docstring).

    A folder calls ``start`` when it gets its first listener and ``stop`` when the
    last one goes (or it is deleted, or the store closes); the watcher calls the
    folder's ``_disk_event((subdir, name, mask))`` for each inotify event, or
    ``_disk_event(None)`` for "something may have changed" (polling, a lost watch),
    and ``_watch_moved("poll")`` when a folder's watch broke and it is polled instead.
    """

    log = Logger()

    def __init__(self, reactor: IStoreReactor,
                 in_thread: Callable[..., defer.Deferred[list[tuple[int, int, int] | None]]],
                 mode: str = "inotify", poll_interval: float = POLL_INTERVAL) -> None:
        if mode not in WATCH_MODES:
            raise ValueError(f"watch mode must be one of {WATCH_MODES}, not {mode!r}")
        self.mode = mode
        self._reactor = reactor
        self._in_thread = in_thread
        self._poll_interval = poll_interval
        self._notifier: _Notifier | None = None
        # folder -> its watched dirs
        self._watched: dict[MaildirFolder, list[FilePath[str]]] = {}
        # folder -> last times
        self._polled: dict[MaildirFolder, tuple[int, int, int] | None] = {}
        self._poll_call: LoopingCall | None = None
        self._polling = False
        self._events = 0  # inotify events handed to folders so far
        self._warned = False  # the fallback is logged once as a warning, then at debug

    # -- folders -----------------------------------------------------------------------

    def start(self, folder: MaildirFolder) -> str:
        """Watch a folder; returns how ("inotify" or "poll")."""
        if self.mode == "inotify" and self._add_watches(folder):
            return "inotify"
        self._start_polling(folder)
        return "poll"

    def stop(self, folder: MaildirFolder) -> None:
        paths = self._watched.pop(folder, None)
        if paths is not None and self._notifier is not None:
            for path in paths:
                try:
                    self._notifier.ignore(path)
                except KeyError:
                    pass  # already dropped (the directory went away)
        self._polled.pop(folder, None)
        self._idle_check()

    def close(self) -> None:
        for folder in list(self._watched) + list(self._polled):
            self.stop(folder)
        self._idle_check()

    def drain(self) -> None:
        """Read the events the kernel has queued now, so a caller about to trust the
        index (a rescan request) does not race the reactor's next read. One read takes
        a few kilobytes; go on while reads bring events (bounded)."""
        for _ in range(DRAIN_READS):
            if self._notifier is None:
                return
            seen = self._events
            self._notifier.doRead()
            if self._events == seen:
                return

    @property
    def watching(self) -> int:
        """How many folders are watched (either way): for tests and metrics."""
        return len(self._watched) + len(self._polled)

    # -- inotify -----------------------------------------------------------------------

    def _get_notifier(self) -> _Notifier | None:
        if self._notifier is None and HAVE_INOTIFY:
            try:
                notifier = _Notifier(self._reactor, self._lost)
            except (_inotify.INotifyError, OSError) as e:
                self._fallback("inotify unavailable ({error}); polling Maildir folders",
                               error=e)
                return None
            notifier.startReading()
            self._notifier = notifier
        return self._notifier

    def _add_watches(self, folder: MaildirFolder) -> bool:
        notifier = self._get_notifier()
        if notifier is None:
            return False
        paths: list[FilePath[str]] = []
        try:
            for sub in ("new", "cur"):
                path = FilePath(os.path.join(folder._path, sub))
                notifier.watch(path, mask=_MASK,
                               callbacks=[self._callback(folder, sub)])
                paths.append(path)
            path = FilePath(folder._path)
            notifier.watch(path, mask=_ROOT_MASK, callbacks=[self._keywords_callback(folder)])
            paths.append(path)
        except _inotify.INotifyError as e:
            # ENOSPC (max_user_watches) or the directory is gone: poll this folder.
            for path in paths:
                try:
                    notifier.ignore(path)
                except KeyError:
                    pass
            self._fallback("cannot watch {path} ({error}); polling it", path=folder._path,
                           error=e)
            self._idle_check()
            return False
        self._watched[folder] = paths
        return True

    def _fallback(self, text: str, **kw: Any) -> None:
        """Say that polling stands in for inotify: a warning the first time (a full
        watch table would otherwise log on every SELECT)."""
        emit = self.log.debug if self._warned else self.log.warn
        self._warned = True
        emit(text, event="maildir_watch_fallback", **kw)

    def _callback(self, folder: MaildirFolder, sub: str) -> _Callback:
        def event(name: str, mask: int) -> None:
            if self._watched.get(folder) is None:
                return  # a late event for a folder no longer watched
            if mask & _GONE_SELF:
                # Not now: INotify is still working on this watch (it drops it after
                # IN_DELETE_SELF, then closes itself).
                self._reactor.callLater(0, self._gone_self, folder)
                return
            self._events += 1
            folder._disk_event((sub, name, mask))

        return event

    def _keywords_callback(self, folder: MaildirFolder) -> _Callback:
        def event(name: str, mask: int) -> None:
            if self._watched.get(folder) is None or name != KEYWORDS_FILE:
                return  # the uidlist, caches, Dovecot's index files, subfolders
            self._events += 1
            folder._disk_event(None)  # a rescan re-reads it if it changed

        return event

    def _gone_self(self, folder: MaildirFolder) -> None:
        """A watched directory itself went away or moved (another program deleted or
        renamed the folder): stop trusting its watches, poll it instead."""
        if folder not in self._watched:
            return
        self.stop(folder)
        self._start_polling(folder)
        folder._watch_moved("poll")
        folder._disk_event(None)

    def _lost(self, notifier: _Notifier) -> None:
        """Twisted closed the descriptor (a watched directory was deleted): watch the
        rest again on a new one, and have each of them rescan once."""
        if notifier is not self._notifier:
            return
        self._notifier = None
        folders = list(self._watched)
        self._watched.clear()
        self._reactor.callLater(0, self._rewatch, folders)

    def _rewatch(self, folders: list[MaildirFolder]) -> None:
        for folder in folders:
            if folder in self._watched or folder in self._polled or not folder._watching:
                continue  # unwatched meanwhile, or already back
            if not self._add_watches(folder):
                self._start_polling(folder)
                folder._watch_moved("poll")
            folder._disk_event(None)

    # -- polling -----------------------------------------------------------------------

    def _start_polling(self, folder: MaildirFolder) -> None:
        self._polled.setdefault(folder, None)
        if self._poll_call is None:
            self._poll_call = LoopingCall(self._poll)
            self._poll_call.clock = self._reactor
            self._poll_call.start(self._poll_interval, now=False)

    def _poll(self) -> None:
        if self._polling or not self._polled:
            return
        self._polling = True
        folders = list(self._polled)
        d = self._in_thread(dir_times, [f._path for f in folders])

        def compare(times: list[tuple[int, int, int] | None]) -> None:
            now = time.time_ns()
            for folder, stamp in zip(folders, times, strict=True):
                if folder not in self._polled:
                    continue
                last = self._polled[folder]
                if stamp == last and (stamp is None
                                      or now - max(stamp) >= MTIME_SETTLE * 1e9):
                    continue  # unchanged, and old enough to trust
                self._polled[folder] = stamp
                folder._disk_event(None)

        def done(result: _R) -> _R:
            self._polling = False
            return result

        d.addCallback(compare)
        d.addBoth(done)
        d.addErrback(lambda f: self.log.failure("polling Maildir folders failed", f))

    # -- tear-down ---------------------------------------------------------------------

    def _idle_check(self) -> None:
        """Give back the inotify descriptor and stop the poll timer once unused."""
        if not self._watched and self._notifier is not None:
            notifier, self._notifier = self._notifier, None
            notifier.on_lost = None
            notifier.loseConnection()
        if not self._polled and self._poll_call is not None:
            call, self._poll_call = self._poll_call, None
            if call.running:
                call.stop()
