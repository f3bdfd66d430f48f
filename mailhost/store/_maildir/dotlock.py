"""Dovecot's dotlock (``<file>.lock``), taken and broken by Dovecot's own rules.

Dovecot guards ``dovecot-uidlist`` with ``dovecot-uidlist.lock`` (src/lib/file-dotlock.c,
settings from maildir-uidlist.c in 2.3.19). To share a Maildir live, we take the same
lock the same way, so each waits for the other:

- **Create** ``<file>.lock`` atomically with ``O_CREAT|O_EXCL`` (Dovecot's default,
  ``dotlock_use_excl = yes``; its other way, a temp file hard-linked into place, is
  equally atomic) and write ``<pid>:<hostname>`` into it.
- **Wait** while it exists: Dovecot sleeps 0.1-0.2 s, growing by half each second up to
  3 s, and wakes early on inotify; we poll from 10 ms up to 0.25 s, so we never sleep
  long past a release. Give up after ``timeout`` (Dovecot: the stale timeout + 2 s,
  122 s, unless ``mail_max_lock_timeout`` is lower).
- **Stale**: a lock at least 2 s old that names a pid of *this* host that no longer
  exists (kill -9) is broken at once. A lock without a readable local pid (another
  host, or empty) is broken when neither it nor the protected file changed for
  ``stale_timeout`` (120 s for the uidlist). A lock of a live process is never broken.
  Breaking is an unlink, then a random 0.1-0.2 s sleep so two breakers do not unlink
  each other's fresh lock.
- **Release**: unlink, only if the lock file is still ours (same inode).

Dovecot replaces ``dovecot-uidlist`` by writing ``dovecot-uidlist.tmp`` and renaming it
over the file while holding the lock, and appends to it in place otherwise (see
dovecot_uidlist.py). All of this blocks: call it in a worker thread only.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import threading
import time

from twisted.logger import Logger

from mailhost.store.modes import PRIVATE, FileModes

log = Logger()

LOCK_SUFFIX = ".lock"
#: Dovecot's MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT, and its wait limit for the uidlist.
UIDLIST_STALE_TIMEOUT = 120
UIDLIST_LOCK_TIMEOUT = UIDLIST_STALE_TIMEOUT + 2
#: Dovecot reads the pid of a lock only once the lock is this old (STALE_PID_CHECK_SECS).
PID_CHECK_SECS = 2
POLL_FIRST = 0.01
POLL_MAX = 0.25

_HOSTNAME = socket.gethostname()

#: Lock paths this process holds (a lock naming our own pid is then not stale).
_held: set[str] = set()
_held_lock = threading.Lock()


#: (inode, device, ctime, mtime, size): a file changed when any of these did.
_ChangeInfo = tuple[int, int, float, float, int]


class LockTimeout(OSError):
    """The dotlock stayed taken (by a live holder) for longer than the timeout."""


def _change_info(st: os.stat_result) -> _ChangeInfo:
    return st.st_ino, st.st_dev, st.st_ctime, st.st_mtime, st.st_size


def _first_change_time(st: os.stat_result, now: float) -> float:
    """Dovecot's first ``last_change``: the mtime if it is later than the ctime and not
    in the future, else the ctime."""
    if st.st_mtime <= now and st.st_mtime > st.st_ctime:
        return int(st.st_mtime)
    return int(st.st_ctime)


def read_pid(lock_path: str, hostname: str = _HOSTNAME) -> int | None:
    """The pid a lock file names, if it names one of this host."""
    try:
        with open(lock_path, "rb") as f:
            text = f.read(511).decode("utf-8", "replace")
    except OSError:
        return None
    pid, sep, host = text.rstrip("\n").partition(":")
    if not sep or host != hostname or not pid.isdecimal() or int(pid) <= 0:
        return None
    return int(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno != errno.ESRCH
    return True


class _Watch:
    """What one waiter has seen of a lock and of the file it protects."""

    def __init__(self) -> None:
        self.lock_info: _ChangeInfo | None = None
        self.file_info: _ChangeInfo | None = None
        self.last_change = 0.0


class DotLock:
    """``<path>.lock`` held by this process (one acquire, one release).

    ``stale_timeout`` and ``timeout`` default to Dovecot's values for dovecot-uidlist.
    """

    def __init__(self, path: str, modes: FileModes = PRIVATE,
                 stale_timeout: float = UIDLIST_STALE_TIMEOUT,
                 timeout: float = UIDLIST_LOCK_TIMEOUT) -> None:
        self.path = path
        self.lock_path = path + LOCK_SUFFIX
        self.modes = modes
        self.stale_timeout = stale_timeout
        self.timeout = timeout
        self._ident: tuple[int, int] | None = None
        self.broke = 0  # stale locks this acquire broke (for logs and tests)

    def __enter__(self) -> DotLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout
        watch = _Watch()
        poll = POLL_FIRST
        while True:
            if self._try_create():
                return
            if self._check_stale(watch):
                continue  # broken (or released meanwhile): try again at once
            if time.monotonic() >= deadline:
                raise LockTimeout(errno.EAGAIN, "dotlock timed out", self.lock_path)
            time.sleep(poll)
            poll = min(poll * 1.5, POLL_MAX)

    def try_acquire(self) -> bool:
        """One attempt, no waiting: True if the lock is now ours."""
        return self._try_create()

    def _try_create(self) -> bool:
        try:
            fd = self.modes.open_new(self.lock_path,
                                     os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return False
        try:
            os.write(fd, f"{os.getpid()}:{_HOSTNAME}".encode())
            st = os.fstat(fd)
        except BaseException:
            # A full disk fails the write: take the empty lock file away again, or
            # every later locker would wait for it to turn stale.
            os.close(fd)
            os.unlink(self.lock_path)
            raise
        os.close(fd)
        self._ident = (st.st_ino, st.st_dev)
        with _held_lock:
            _held.add(self.lock_path)
        return True

    def _check_stale(self, watch: _Watch) -> bool:
        """True if the lock is gone or was broken here (try again now)."""
        now = time.time()
        try:
            st = os.lstat(self.lock_path)
        except FileNotFoundError:
            return True
        info = _change_info(st)
        if info != watch.lock_info:
            change = now if watch.lock_info is not None else _first_change_time(st, now)
            watch.last_change = max(watch.last_change, change)
            watch.lock_info = info
        if st.st_mtime < now - PID_CHECK_SECS:
            pid = read_pid(self.lock_path)
            if pid is not None:
                if pid == os.getpid():
                    with _held_lock:
                        mine = self.lock_path in _held
                    if mine:
                        return False  # another thread of ours holds it
                elif _pid_alive(pid):
                    return False  # a live holder: never broken
                return self._break(info)
        if now > watch.last_change + self.stale_timeout:
            try:
                fst = os.stat(self.path)
            except FileNotFoundError:
                pass  # as if unchanged
            else:
                finfo = _change_info(fst)
                if finfo != watch.file_info:
                    change = (now if watch.file_info is not None
                              else _first_change_time(fst, now))
                    watch.last_change = max(watch.last_change, change)
                    watch.file_info = finfo
            if now > watch.last_change + self.stale_timeout:
                return self._break(info)
        return False

    def _break(self, seen: _ChangeInfo) -> bool:
        """Unlink a stale lock, if it is still the one judged stale."""
        try:
            if _change_info(os.lstat(self.lock_path)) != seen:
                return True  # replaced meanwhile: judge the new one
            os.unlink(self.lock_path)
        except FileNotFoundError:
            return True
        self.broke += 1
        log.warn("broke stale lock {path}", path=self.lock_path, event="dotlock_broken")
        time.sleep(0.1 + random.random() * 0.1)
        return True

    def release(self) -> None:
        ident, self._ident = self._ident, None
        if ident is None:
            return
        with _held_lock:
            _held.discard(self.lock_path)
        try:
            st = os.lstat(self.lock_path)
        except FileNotFoundError:
            log.warn("our lock {path} was deleted", path=self.lock_path,
                     event="dotlock_lost")
            return
        if (st.st_ino, st.st_dev) != ident:
            log.warn("our lock {path} was overridden", path=self.lock_path,
                     event="dotlock_lost")
            return
        try:
            os.unlink(self.lock_path)
        except FileNotFoundError:
            pass

    def still_held(self) -> bool:
        """True if the lock file is still ours (check before replacing the file)."""
        if self._ident is None:
            return False
        try:
            st = os.lstat(self.lock_path)
        except FileNotFoundError:
            return False
        return (st.st_ino, st.st_dev) == self._ident
