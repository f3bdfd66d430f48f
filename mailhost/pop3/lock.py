"""The maildrop lock: one POP3 session per user at a time (RFC 1939 section 8).

Two sessions over one maildrop would number messages differently and race their
UPDATE states. The lock lives in this process (held by the factory, shareable by the
plain and TLS listeners); IMAP sessions are not locked out, the store keeps them
consistent through its listeners. With ``workers = N`` the lock must hold across
processes: ``FileMaildropLocks`` adds an ``flock`` on a file per user, as Dovecot's
POP3 lock does, which the kernel drops when the holder dies (kill -9 included).
"""

from __future__ import annotations

import fcntl
import hashlib
import os


class MaildropLocks:
    """The set of users with a live POP3 session."""

    def __init__(self) -> None:
        self._held: set[str] = set()

    def acquire(self, user: str) -> bool:
        """Take the lock for ``user``; False when another session holds it."""
        if user in self._held:
            return False
        self._held.add(user)
        return True

    def release(self, user: str) -> None:
        self._held.discard(user)

    def held(self, user: str) -> bool:
        return user in self._held


class FileMaildropLocks(MaildropLocks):
    """``MaildropLocks`` that also hold across processes: an ``flock`` on
    ``<directory>/<hash of user>.lock`` for as long as the session holds the lock.

    The open and ``flock(LOCK_NB)`` are two non-blocking system calls on a local
    file at login, not worth a thread hop.
    """

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory
        self._files: dict[str, int] = {}

    def _path(self, user: str) -> str:
        name = hashlib.sha256(user.encode("utf-8", "surrogateescape")).hexdigest()[:40]
        return os.path.join(self.directory, f"{name}.lock")

    def acquire(self, user: str) -> bool:
        if not super().acquire(user):
            return False
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            fd = os.open(self._path(user), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            super().release(user)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by a session of another worker
            os.close(fd)
            super().release(user)
            return False
        self._files[user] = fd
        return True

    def release(self, user: str) -> None:
        fd = self._files.pop(user, None)
        if fd is not None:
            os.close(fd)  # drops the flock
        super().release(user)
