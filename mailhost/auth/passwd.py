"""The passwd file: ``user@domain:<argon2id hash>[:key=value ...]`` per line.

Extra fields carry per-user settings (``aliases=a@x,b@x``, ``quota=...``). The file
is re-read whenever its mtime or size changes, so edits by ``mailhost user`` or by
hand take effect without a restart. Writes go through a temp file and a rename so a
reader never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

from twisted.logger import Logger

log = Logger()


class PasswdError(Exception):
    """A malformed passwd line or an invalid user name."""


@dataclass
class PasswdEntry:
    user: str
    password_hash: str
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def aliases(self) -> list[str]:
        raw = self.extra.get("aliases", "")
        return [a.strip().lower() for a in raw.split(",") if a.strip()]

    def to_line(self) -> str:
        fields = [self.user, self.password_hash]
        fields += [f"{k}={v}" for k, v in sorted(self.extra.items())]
        return ":".join(fields)


def normalize_address(address: str) -> str:
    """Canonical form of a mailbox address: stripped and lower-cased."""
    return address.strip().lower()


def validate_user(user: str) -> str:
    """Return the canonical user name or raise PasswdError."""
    user = normalize_address(user)
    local, at, domain = user.rpartition("@")
    if not at or not local or not domain or "." not in domain.strip("."):
        raise PasswdError(f"{user!r}: a user must be a full address, local@domain")
    bad = set(":/\\\0\r\n \t")
    if any(c in bad or ord(c) < 32 for c in user) or local.startswith(".") or ".." in user:
        raise PasswdError(f"{user!r}: invalid characters in user name")
    return user


def parse_line(line: str, lineno: int = 0) -> PasswdEntry | None:
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    parts = line.split(":")
    if len(parts) < 2:
        raise PasswdError(f"line {lineno}: expected user@domain:hash")
    extra = {}
    for item in parts[2:]:
        key, eq, value = item.partition("=")
        if not eq:
            raise PasswdError(f"line {lineno}: extra field {item!r} is not key=value")
        extra[key.strip()] = value.strip()
    return PasswdEntry(validate_user(parts[0]), parts[1], extra)


class PasswdFile:
    """A passwd file, cached in memory and reloaded when it changes on disk."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._entries: dict[str, PasswdEntry] = {}
        self._aliases_for: dict[str, PasswdEntry] | None = None
        self._aliases: dict[str, list[str]] = {}

    def _current_stamp(self) -> tuple[float, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def entries(self) -> dict[str, PasswdEntry]:
        """All entries by user; re-read if the file changed since last time."""
        stamp = self._current_stamp()
        if stamp != self._stamp:
            self._entries = self._read()
            self._stamp = stamp
        return self._entries

    def _read(self) -> dict[str, PasswdEntry]:
        entries: dict[str, PasswdEntry] = {}
        try:
            with open(self.path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    try:
                        entry = parse_line(line, n)
                    except PasswdError as e:
                        log.warn("{path}: {error}; line ignored", path=self.path, error=str(e))
                        continue
                    if entry:
                        entries[entry.user] = entry
        except FileNotFoundError:
            pass
        return entries

    def aliases_by_user(self) -> dict[str, list[str]]:
        """user -> extra aliases; the same dict object until the file changes."""
        entries = self.entries()
        if self._aliases_for is not entries:
            self._aliases_for = entries
            self._aliases = {user: entry.aliases for user, entry in entries.items()}
        return self._aliases

    def get(self, user: str) -> PasswdEntry | None:
        return self.entries().get(normalize_address(user))

    def save(self, entries: dict[str, PasswdEntry]) -> None:
        """Atomically replace the file (mode 0600)."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".passwd.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for user in sorted(entries):
                    f.write(entries[user].to_line() + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._stamp = None
