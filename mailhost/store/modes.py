"""Who may read a Maildir: the file and directory modes (and group) of everything the
store creates, whatever the process umask.

Mail is private: files 0600 and directories 0700 by default, as Dovecot makes them. A
site whose MDA (procmail, maildrop, Dovecot's LDA) runs in a shared group sets
``[store] file_mode``/``dir_mode``/``group``; every creation goes through one
``FileModes`` so no path is left to the umask.

Decisions, once:

- The mode is fixed only on what this process creates. A file or directory that
  already exists (written by an older mailhost with 0644/0755, or by Dovecot, mutt or
  an MDA with its own policy) is left as it is: changing another writer's files behind
  its back is not ours to do, and a chmod of whole trees at startup is slow and racy.
- With a ``group``, new directories are also setgid (``2770`` for ``dir_mode = 0770``),
  as Dovecot's and maildrop's shared-mailbox setups have them: then the files an MDA
  creates there, knowing nothing of our config, get the group too. Without a group a
  setgid bit the kernel copied from a setgid parent is kept, never cleared.
- A mode that the umask already gives costs one fstat and no chmod; the chmod (and
  chown) happen only when the umask or the parent directory got it wrong.

Every function here does file I/O and runs in a worker thread (or once, at setup),
except ``open_new`` for the rare message too large to keep in memory.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass

_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
#: Bounded retries when another process creates/removes the same path meanwhile.
_RACE_RETRIES = 10


@dataclass(frozen=True, slots=True)
class FileModes:
    """The permission policy of one store (Implements nothing: a value object).

    ``file_mode``: permission bits of new files (read/write bits only).
    ``dir_mode``: permission bits of new directories (the owner needs rwx).
    ``group``: gid given to new files and directories, or None for the process's
    (or a setgid parent's) group.
    """

    file_mode: int = 0o600
    dir_mode: int = 0o700
    group: int | None = None

    def __post_init__(self) -> None:
        if self.file_mode & ~0o666 or self.file_mode & 0o600 != 0o600:
            raise ValueError(f"file mode {self.file_mode:04o}: owner rw, read/write bits only")
        if self.dir_mode & ~0o777 or self.dir_mode & 0o700 != 0o700:
            raise ValueError(f"directory mode {self.dir_mode:04o}: owner rwx, "
                             "permission bits only")

    def open_new(self, path: str, flags: int = os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                 fix: bool = True) -> int:
        """``os.open`` a file that may be created, with our mode and group, never the
        umask's. Returns the fd. The mode is fixed only if this call created the file:
        with O_CREAT but not O_EXCL an existing file is opened as it is.

        ``fix=False``: the caller calls ``fix_fd`` itself once it has written the file,
        and uses the same fstat for the mtime the write gave (maildir_io.deliver_files:
        one system call less per message in a worker thread, issue 18). The file's mode
        until then is ours narrowed by the umask, never wider."""
        if flags & os.O_CREAT and not flags & os.O_EXCL:
            # Existing first: appends to a uidlist or cache cost one open, as before.
            for _ in range(_RACE_RETRIES):
                try:
                    return os.open(path, flags & ~os.O_CREAT)
                except FileNotFoundError:
                    pass
                try:
                    return self.open_new(path, flags | os.O_EXCL)
                except FileExistsError:
                    continue  # created meanwhile by someone else: open theirs
            raise FileExistsError(path)
        fd = os.open(path, flags, self.file_mode)
        try:
            if flags & os.O_CREAT and fix:
                self.fix_fd(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def fix_fd(self, fd: int) -> os.stat_result:
        """Give a file this process just created our mode (and group), undoing the
        umask. Returns the fstat it took (from before any fix: its times hold)."""
        st = os.fstat(fd)
        if self.group is not None and st.st_gid != self.group:
            os.fchown(fd, -1, self.group)
        if stat.S_IMODE(st.st_mode) != self.file_mode:
            os.fchmod(fd, self.file_mode)
        return st

    def created_fits(self, umask: int | None) -> bool:
        """Whether a file created with our mode under ``umask`` (None: not known) has
        our mode and group already, so ``fix_fd`` would change nothing: no group to
        give, and the umask clears none of our bits."""
        return umask is not None and self.group is None and not self.file_mode & umask

    def fits(self, st: os.stat_result) -> bool:
        """Whether a file with this stat already has our mode (and group): ``fix_fd``
        changed nothing on it."""
        return (stat.S_IMODE(st.st_mode) == self.file_mode
                and (self.group is None or st.st_gid == self.group))

    def _fix_dir(self, fd: int) -> None:
        st = os.fstat(fd)
        if self.group is not None:
            if st.st_gid != self.group:
                os.fchown(fd, -1, self.group)
            want = self.dir_mode | stat.S_ISGID
        else:
            want = self.dir_mode | (st.st_mode & stat.S_ISGID)  # inherited: keep it
        if stat.S_IMODE(st.st_mode) != want:
            os.fchmod(fd, want)

    def mkdir(self, path: str) -> bool:
        """Create one directory with our mode and group; False if it already existed
        (then it is left as it is). FileExistsError if ``path`` is not a directory."""
        try:
            os.mkdir(path, self.dir_mode)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
            return False
        fd = os.open(path, _DIR_OPEN)
        try:
            self._fix_dir(fd)
        finally:
            os.close(fd)
        return True

    def makedirs(self, path: str) -> None:
        """``os.makedirs(path, exist_ok=True)`` where every directory it creates gets
        our mode and group (existing ones are left alone)."""
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path.rstrip(os.sep))
        if parent and parent != path:
            self.makedirs(parent)
        self.mkdir(path)

    def touch(self, path: str) -> None:
        """Create an empty file with our mode if it does not exist (``maildirfolder``)."""
        os.close(self.open_new(path, os.O_WRONLY | os.O_CREAT))

    def write_atomic(self, path: str, data: bytes, fsync: bool) -> None:
        """Replace ``path`` by a complete new file with our mode (write, fsync, rename).

        The temp file is created exclusively, so a stale one a crash left behind under
        the same name is removed first rather than reused with its old mode."""
        tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            fd = self.open_new(tmp, flags)
        except FileExistsError:
            os.unlink(tmp)
            fd = self.open_new(tmp, flags)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, path)


PRIVATE = FileModes()


def process_umask() -> int | None:
    """The process's umask, read without setting it (``os.umask`` can only swap it,
    which races with other threads creating files): Linux's ``/proc/self/status``.
    None where that is not to be had."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None
