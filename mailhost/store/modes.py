"""Who may read a Maildir: the file and directory modes (and group) of everything the
store creates, whatever the process umask.

Mail is private: files 0600 and directories 0700 by default, as Dovecot makes them. A
site whose MDA (procmail, maildrop, Dovecot's LDA) runs in a shared group sets
``[store] file_mode``/``dir_mode``/``group``; every creation goes through one
``FileModes`` so no path is left to the umask. Every function here does file I/O and
runs in a worker thread (or once, at setup).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FileModes:
    """The permission policy of one store (Implements nothing: a value object)."""

    file_mode: int = 0o600
    dir_mode: int = 0o700
    group: int | None = None  # gid to give new files and directories, or None

    def open_new(self, path: str, flags: int = os.O_WRONLY | os.O_CREAT | os.O_EXCL) -> int:
        """``os.open`` a file that may be created, with our mode and group, never the
        umask's. Returns the fd; the mode is fixed only if this call created the file."""
        fd = os.open(path, flags, self.file_mode)
        try:
            if flags & os.O_CREAT:
                self.fix_fd(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def fix_fd(self, fd: int) -> None:
        """Give an open file our mode (and group), undoing the umask."""
        st = os.fstat(fd)
        if self.group is not None and st.st_gid != self.group:
            os.fchown(fd, -1, self.group)
        if st.st_mode & 0o7777 != self.file_mode:
            os.fchmod(fd, self.file_mode)

    def makedirs(self, path: str) -> None:
        """``os.makedirs`` where every directory it creates gets our mode and group."""
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path.rstrip(os.sep))
        if parent and parent != path:
            self.makedirs(parent)
        try:
            os.mkdir(path, self.dir_mode)
        except FileExistsError:
            return
        if self.group is not None:
            os.chown(path, -1, self.group)
        os.chmod(path, self.dir_mode)  # mkdir's mode is masked by the umask

    def write_atomic(self, path: str, data: bytes, fsync: bool) -> None:
        """Replace ``path`` by a complete new file with our mode (write, fsync, rename)."""
        tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
        fd = self.open_new(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)


PRIVATE = FileModes()
