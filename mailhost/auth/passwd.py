"""The passwd file: ``user@domain:<argon2id hash>[:key=value ...]`` per line.

Extra fields carry per-user settings (``aliases=a@x,b@x``, ``quota=...``). The file
is re-read whenever its mtime or size changes, so edits by ``mailhost user`` or by
hand take effect without a restart. Writes go through a temp file and a rename so a
reader never sees half a file.

User names and aliases pass ``mailhost.store.names.check_address``, the one
validation the store and the CLI use too. The loader skips a line it cannot use
(bad name, bad alias, undecodable bytes, a second line for the same user) with one
log line and never raises; the writer refuses any entry whose line would not parse
back to the same entry, so no field can smuggle a ``:`` or a newline into the file
(issue 17, items 2 and 11).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from mailhost.auth.filestamp import FileStamp
from mailhost.store.names import InvalidUserName, check_address

log = Logger()

# Extra-field keys: what mailhost writes (aliases, quota) and what a hand edit may
# add; never a separator, '=' or whitespace.
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


class PasswdError(Exception):
    """A malformed passwd line or an invalid user name."""


@dataclass
class PasswdEntry:
    user: str
    password_hash: str
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def aliases(self) -> list[str]:
        return split_aliases(self.extra.get("aliases", ""))

    def to_line(self) -> str:
        """The passwd line; PasswdError if it would not parse back to this entry."""
        fields = [self.user, self.password_hash]
        fields += [f"{k}={v}" for k, v in sorted(self.extra.items())]
        line = ":".join(fields)
        if any(_unsafe(c) for c in line):
            raise PasswdError(f"{self.user!r}: a field holds a control character or a "
                              "line break")
        back = parse_line(line)  # raises PasswdError for a bad name, alias or field
        if back is None or (back.user, back.password_hash, back.extra) != (
                normalize_address(self.user), self.password_hash, self.extra):
            raise PasswdError(f"{self.user!r}: the entry would not read back as written "
                              "(a field holds ':' or surrounding spaces)")
        return line


def split_aliases(raw: str) -> list[str]:
    """The addresses of an ``aliases=`` field, normalised."""
    return [normalize_address(a) for a in raw.split(",") if a.strip()]


def _unsafe(c: str) -> bool:
    """A character no passwd field may hold: controls and anything that splits lines."""
    return not c.isprintable() and c != " "


def normalize_address(address: str) -> str:
    """Canonical form of a mailbox address: stripped and lower-cased."""
    return address.strip().lower()


def validate_user(user: str) -> str:
    """Return the canonical user name (or alias) or raise PasswdError.

    The rules are ``mailhost.store.names.check_address``; this only lower-cases first
    and turns its error into a PasswdError.
    """
    user = normalize_address(user)
    try:
        check_address(user)
    except InvalidUserName as e:
        raise PasswdError(str(e)) from None
    return user


def parse_line(line: str, lineno: int = 0) -> PasswdEntry | None:
    """One passwd line as an entry (None for a blank or comment line); PasswdError
    names what is wrong, so the loader can log it and skip the line."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    where = f"line {lineno}: " if lineno else ""
    parts = line.split(":")
    if len(parts) < 2:
        raise PasswdError(f"{where}expected user@domain:hash")
    try:
        user = validate_user(parts[0])
    except PasswdError as e:
        raise PasswdError(f"{where}{e}") from None
    password_hash = parts[1]
    if not password_hash or any(c.isspace() or _unsafe(c) for c in password_hash):
        raise PasswdError(f"{where}{user}: the password hash is empty or holds spaces")
    extra = {}
    for item in parts[2:]:
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not set(key) <= _KEY_CHARS:
            raise PasswdError(f"{where}{user}: extra field {item!r} is not key=value")
        if key in extra:
            raise PasswdError(f"{where}{user}: extra field {key!r} given twice")
        extra[key] = value
    for alias in split_aliases(extra.get("aliases", "")):
        try:
            validate_user(alias)
        except PasswdError as e:
            raise PasswdError(f"{where}{user}: alias {e}") from None
    return PasswdEntry(user, password_hash, extra)


class PasswdFile:
    """A passwd file, cached in memory and reloaded when it changes on disk."""

    def __init__(self, path: str, reactor: Any = None) -> None:
        """``reactor``: given, the file is stat'ed at most once per reactor turn
        (mailhost.auth.filestamp); else at every look, as the CLI needs."""
        self.path = path
        self._file_stamp = FileStamp(path, reactor)
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, PasswdEntry] = {}
        self._aliases_for: dict[str, PasswdEntry] | None = None
        self._aliases: dict[str, list[str]] = {}

    def _current_stamp(self) -> tuple[int, int] | None:
        return self._file_stamp.current()

    def entries(self) -> dict[str, PasswdEntry]:
        """All entries by user; re-read if the file changed since last time."""
        stamp = self._current_stamp()
        if stamp != self._stamp:
            self._entries = self._read()
            self._stamp = stamp
        return self._entries

    def _read(self) -> dict[str, PasswdEntry]:
        """Every usable line; each unusable one is skipped with one log line. The
        first line for a user wins: a later one (an appended or injected line) cannot
        take over an existing user."""
        entries: dict[str, PasswdEntry] = {}
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return entries
        for n, raw in enumerate(data.split(b"\n"), 1):
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise PasswdError(f"line {n}: not UTF-8") from None
                entry = parse_line(line, n)
                if entry is not None and entry.user in entries:
                    raise PasswdError(f"line {n}: {entry.user} already defined above")
            except PasswdError as e:
                log.warn("{path}: {error}; line ignored", path=self.path, error=str(e),
                         event="passwd.bad_line")
                continue
            if entry is not None:
                entries[entry.user] = entry
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
        """Atomically replace the file (mode 0600). PasswdError, with the file left
        as it was, if any entry would not read back as written."""
        lines = [entries[user].to_line() + "\n" for user in sorted(entries)]
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".passwd.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._stamp = None
        self._file_stamp.forget()
