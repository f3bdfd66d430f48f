"""Free space and storage errors: what the servers say when the disk is full or read-only.

A full disk used to show only after a whole upload (``451 4.3.0`` and a traceback),
and IMAP answered ``NO [SERVERBUG]``. Now (issue 17, item 12):

- ``FreeSpace`` measures the file systems mail is written to (data directory, Maildir
  root, queue) with ``statvfs`` in a worker thread, once a second, so a command never
  waits on it and never blocks the reactor. SMTP asks it at MAIL and RCPT and answers
  ``452 4.3.1 Insufficient system storage`` below ``smtp.min_free_space`` (Postfix's
  ``queue_minfree``; a declared ``SIZE`` must fit on top), before any byte of the
  message is sent. A read-only file system gets ``451 4.3.0`` there too.
- ``storage_problem`` sorts an ``OSError`` into full, read-only or other, so SMTP and
  IMAP answer each with its own reply (IMAP: ``NO [OVERQUOTA]``, ``NO [UNAVAILABLE]``,
  ``NO [CANNOT]``) and log one line, not a traceback: the environment failed, not code.
- ``check_writable`` makes a start on a read-only data directory fail at once with
  one line, instead of a server that starts and then fails every delivery.

A full disk at start is not refused: reading mail still works, and the 452 guard
keeps new mail out until space is freed.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger

log = Logger()

FULL = "full"
READ_ONLY = "read-only"
OTHER = "error"

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_READ_ONLY_ERRNOS = frozenset({errno.EROFS})


def storage_problem(exc: BaseException) -> str | None:
    """FULL, READ_ONLY or OTHER for an OSError (the disk's fault), None for any other
    exception (a bug, which deserves its traceback)."""
    if not isinstance(exc, OSError):
        return None
    if exc.errno in _FULL_ERRNOS:
        return FULL
    if exc.errno in _READ_ONLY_ERRNOS:
        return READ_ONLY
    return OTHER


def describe(exc: BaseException) -> str:
    """One line for the log: the OS's words and the file, never a traceback."""
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f": {exc.filename}" if exc.filename else ""
        return f"[Errno {exc.errno}] {exc.strerror or exc}{where}"
    return f"{type(exc).__name__}: {exc}"


def _existing(path: str) -> str:
    """``path`` or its nearest existing ancestor (a Maildir root or queue made later
    lives on the file system of its parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_writable(paths: Iterable[str]) -> None:
    """Raise OSError (with the path) if a file cannot be created in one of ``paths``
    because the file system is read-only or permissions forbid it. A full disk passes:
    the server starts, serves what is stored and refuses new mail with 452."""
    for path in dict.fromkeys(_existing(p) for p in paths):
        try:
            fd, probe = tempfile.mkstemp(prefix=".mailhost-probe.", dir=path)
        except OSError as e:
            if storage_problem(e) == FULL:
                continue
            raise OSError(e.errno, e.strerror, path) from None  # the directory, not the probe
        os.close(fd)
        os.unlink(probe)


class FreeSpace(service.Service):
    """Free bytes and the read-only flag of the file systems under ``paths``, measured
    in a thread every ``interval`` seconds while the service runs.

    ``minimum()`` is read at every question, so a reload of the setting applies at
    once. Until the first measurement, or when ``statvfs`` fails, nothing is refused:
    the guard can only help, never stop mail on its own error.
    """

    def __init__(self, paths: Iterable[str], minimum: Callable[[], int], reactor: Any = None,
                 interval: float = 1.0, statvfs: Callable[[str], Any] = os.statvfs,
                 in_thread: Callable[..., defer.Deferred] | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.paths = list(dict.fromkeys(os.path.abspath(p) for p in paths))
        self.minimum = minimum
        self.reactor = reactor
        self.interval = interval
        self._statvfs = statvfs
        self._in_thread = in_thread or (
            lambda f, *a: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *a))
        # path -> (bytes available to us, read-only?); a path whose statvfs failed is absent
        self.measured: dict[str, tuple[int, bool]] = {}
        self._refreshing: defer.Deferred | None = None
        self._loop: task.LoopingCall | None = None
        self._reported: str | None = None  # the shortage last logged, so it is logged once

    def startService(self) -> None:  # noqa: N802 (Twisted's IService)
        super().startService()
        self._loop = task.LoopingCall(self.refresh)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("free space measurement stopped", f))

    def stopService(self) -> Any:  # noqa: N802
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

    def _measure(self) -> dict[str, tuple[int, bool] | str]:
        """In a worker thread: statvfs of every path (an error's text where it fails)."""
        out: dict[str, tuple[int, bool] | str] = {}
        for path in self.paths:
            try:
                st = self._statvfs(_existing(path))
            except OSError as e:
                out[path] = describe(e)
                continue
            out[path] = (st.f_bavail * st.f_frsize, bool(st.f_flag & os.ST_RDONLY))
        return out

    def refresh(self) -> defer.Deferred:
        """Measure again (one measurement at a time); fires when the figures are in."""
        if self._refreshing is not None:
            return self._refreshing
        d = self._in_thread(self._measure)

        def store(result: dict[str, tuple[int, bool] | str]) -> None:
            measured = {}
            for path, value in result.items():
                if isinstance(value, str):
                    log.warn("cannot measure free space of {path}: {error}", path=path,
                             error=value, event="storage.statvfs_failed")
                else:
                    measured[path] = value
            self.measured = measured
            self._log_change()

        def done(result: Any) -> Any:
            self._refreshing = None
            return result

        d.addCallback(store)
        d.addErrback(lambda f: log.failure("free space measurement failed", f))
        d.addBoth(done)
        if self._refreshing is None and not d.called:
            self._refreshing = d
        return d

    def shortage(self, size: int = 0) -> str | None:
        """FULL when a file system has less than the minimum plus ``size`` bytes free,
        READ_ONLY when one is mounted read-only, else None."""
        minimum = self.minimum()
        for free, read_only in self.measured.values():
            if read_only:
                return READ_ONLY
            if minimum > 0 and free < minimum + max(size, 0):
                return FULL
        return None

    def _log_change(self) -> None:
        now = self.shortage()
        if now == self._reported:
            return
        self._reported = now
        figures = ", ".join(f"{p}: {free} bytes free" + (" (read-only)" if ro else "")
                            for p, (free, ro) in self.measured.items())
        if now is None:
            log.info("storage has room again ({figures}): accepting mail", figures=figures,
                     event="storage.ok")
        else:
            log.warn("storage is {state} ({figures}; smtp.min_free_space = {minimum}): "
                     "refusing new mail until this changes", state=now, figures=figures,
                     minimum=self.minimum(), event="storage.short")
