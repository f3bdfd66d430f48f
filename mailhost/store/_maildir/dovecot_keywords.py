"""A folder's ``dovecot-keywords``, shared live with Dovecot: read when it changed,
letters given out and the file replaced the way Dovecot does it.

Dovecot 2.3 (src/lib-storage/index/maildir/maildir-keywords.c) keeps the map
``<index> <keyword>`` (index 0-25 is the letter a-z in ``:2,`` file names) and:

- **re-reads** the file when its mtime differs from the one it last read (it compares
  whole seconds), and only when it meets a keyword name or letter it does not know;
- **creates** a keyword only while it holds ``dovecot-uidlist.lock`` (keywords have no
  lock of their own; ``maildir_keywords_lookup_or_create`` refuses otherwise), at the
  first free index after that re-read; with 26 taken the keyword gets no letter;
- **writes** the whole map into ``dovecot-keywords.lock`` (unlinking a leftover one
  first: the uidlist lock is what excludes other writers), makes the mtime grow past
  the one it last read, and renames the lock file over ``dovecot-keywords``.

We do the same, from worker threads only: a stat before any new letter is given out
(re-read if inode, size, mtime or ctime moved), new letters only under the uidlist
dotlock after a second look, never a letter the file (or a file name we have seen)
already uses, and the replace through the store's ``FileModes``. Names are matched
case-insensitively, as Dovecot's hash does, so ``$work`` never gets a second letter
beside ``$Work`` (Dovecot would ignore the duplicate line and rename its letter to
``unknown-N``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable

from mailhost.store._maildir.dotlock import LOCK_SUFFIX, DotLock
from mailhost.store._maildir.maildir_names import KEYWORDS_FILE, Keywords
from mailhost.store.modes import FileModes

#: What a reader gets: (generation of the map, {index: keyword}).
KeywordMap = tuple[int, dict[int, str]]


def _stamp(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class KeywordFile:
    """This process's view of one folder's ``dovecot-keywords`` (worker threads only).

    ``uidlist_lock`` makes the folder's ``dovecot-uidlist`` DotLock, the lock under
    which Dovecot (and we) give out new letters. ``generation`` grows whenever the map
    changes, so the reactor thread can drop a result older than one it applied.
    """

    def __init__(self, path: str, modes: FileModes, fsync: bool,
                 uidlist_lock: Callable[[], DotLock]) -> None:
        self.path = path
        self.modes = modes
        self.fsync = fsync
        self._uidlist_lock = uidlist_lock
        self._mutex = threading.Lock()
        self._keywords = Keywords()
        self._stamp: tuple[int, int, int, int, int] | None = None  # None: absent
        self._mtime = 0  # whole-second mtime of the file as last read or written
        self._read_once = False
        self.generation = 0

    def set_path(self, path: str) -> None:
        """The folder directory was renamed (the file moved with it)."""
        self.path = path

    @property
    def file_path(self) -> str:
        return os.path.join(self.path, KEYWORDS_FILE)

    def _map(self) -> KeywordMap:
        return self.generation, dict(self._keywords.by_index)

    def _sync(self) -> None:
        """Re-read the file if it changed since we last read or wrote it (one stat when
        it did not). Call with ``_mutex`` held."""
        path = self.file_path
        if self._read_once:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            if (None if st is None else _stamp(st)) == self._stamp:
                return
        self._read_once = True
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
                fst = os.fstat(f.fileno())
        except FileNotFoundError:
            # Gone (or replaced and gone again): no keywords, as Dovecot reads it.
            stamp, text, mtime = None, "", 0
        else:
            stamp, mtime = _stamp(fst), int(fst.st_mtime)
        self._stamp, self._mtime = stamp, mtime
        parsed = Keywords.parse(text)
        if parsed.by_index != self._keywords.by_index:
            self._keywords = parsed
            self.generation += 1

    def current(self, wait: bool = True) -> KeywordMap | None:
        """The map as the file has it now (re-read only if it changed). With ``wait``
        False, None instead of waiting for a thread that is giving out letters (it
        brings the map to the reactor itself)."""
        if not self._mutex.acquire(blocking=wait):
            return None
        try:
            self._sync()
            return self._map()
        finally:
            self._mutex.release()

    def learn(self, names: Iterable[str], avoid: Iterable[str] = ()) -> KeywordMap:
        """Make sure every keyword in ``names`` has a letter in the file, and return the
        map. New letters are given under the uidlist lock after a fresh look at the
        file, first the free ones not in ``avoid`` (letters seen in file names that no
        keyword maps), and the file is replaced before this returns, so no file name
        uses a letter the file does not have. StoreError (nothing written) if the 26
        letters do not suffice."""
        names = list(names)
        with self._mutex:
            self._sync()
            if all(self._keywords.index_of(n) is not None for n in names):
                return self._map()
            with self._uidlist_lock():
                self._sync()  # Dovecot may have added some while we waited
                merged = Keywords(self._keywords.by_index)
                if merged.assign(names, avoid):
                    self._write(merged)
                    self._keywords = merged
                    self.generation += 1
            return self._map()

    def _write(self, keywords: Keywords) -> None:
        """Replace the file as Dovecot does: the whole map into ``dovecot-keywords.lock``
        (ours alone while we hold the uidlist lock, so a leftover is a crash's and is
        removed), mtime past the one we read, rename over the file."""
        path = self.file_path
        tmp = path + LOCK_SUFFIX
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            fd = self.modes.open_new(tmp, flags)
        except FileExistsError:
            os.unlink(tmp)
            fd = self.modes.open_new(tmp, flags)
        try:
            view = memoryview(keywords.serialize().encode("utf-8"))
            while view:
                view = view[os.write(fd, view):]
            # Dovecot notices a change by the whole-second mtime only: it must grow.
            mtime = int(os.fstat(fd).st_mtime)
            if mtime <= self._mtime:
                mtime = self._mtime + 1
                os.utime(fd, (time.time(), mtime))
            if self.fsync:
                os.fsync(fd)
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, path)
        # A rename changes the ctime: take the stamp from the file in place.
        try:
            st = os.stat(path)
        except FileNotFoundError:
            pass
        self._stamp, self._mtime = _stamp(st), mtime

