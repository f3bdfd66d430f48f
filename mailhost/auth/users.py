"""One user source for login and delivery: the checkers say who receives mail.

A cred checker decides who may log in; SMTP must also know who exists, or a user who
can read mail over IMAP gets ``550 5.1.1`` on delivery. Declaring the users twice
(a checker, then a ``UserDirectory`` listing them again) drifts, so the checkers are
the one place: ``makeService`` builds its directory from the checkers' users.

- A checker that can list its users declares ``IUserSource`` (``mail_users()``):
  ``PasswdFileChecker`` and ``InMemoryChecker`` do, and so can an embedder's own.
- Twisted's own checkers cannot declare it, so ``user_source`` reads two of them
  through their public API: ``InMemoryUsernamePasswordDatabaseDontUse`` (its
  ``users``) and ``FilePasswordDB`` (its file, re-read when it changes). Their user
  names are bytes (``b"alice@example.test"``), in lower case, since mailhost hands
  every checker the normalised name (``mailhost.auth.login``).
- A checker that is also an ``IUserDirectory`` (accept-anything capture mode, an
  embedder's own LDAP lookup) is the directory itself: ``directory_among``.

An explicit ``makeService(directory=...)`` still wins over all of these. This is a
function of the checkers handed in, not a registry filled on import: what is read
and how is in this one module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from twisted.cred.checkers import FilePasswordDB, InMemoryUsernamePasswordDatabaseDontUse
from zope.interface import Interface, implementer

from mailhost.auth.directory import IUserDirectory, UsersSource
from mailhost.auth.passwd import normalize_address
from mailhost.store.names import InvalidUserName, check_address


class IUserSource(Interface):
    """Who can log in, and so who receives mail: declared once, on the checker."""

    def mail_users() -> Mapping[str, Sequence[str]]:
        """Every user, by canonical (lower-case) address, mapped to the extra
        addresses that deliver to that user (``[]`` for none). Called on every SMTP
        recipient: return the same mapping object until the users change, so the
        directory can keep its alias table."""


def _address(name: bytes | str) -> str | None:
    """A user name of a foreign checker as a canonical address; None if it cannot be
    one (a bare ``alice``, undecodable bytes, upper case: no login could reach it)."""
    if isinstance(name, bytes):
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if normalize_address(name) != name:
        return None
    try:
        check_address(name)
    except InvalidUserName:
        return None
    return name


class NoAliases(Mapping[str, Sequence[str]]):
    """A live view of a user collection as ``{user: []}``: one object for good, so
    the directory's alias table (per-user aliases: none) is built once."""

    def __init__(self, names: Any) -> None:
        self._names = names  # a dict (or set) whose keys are the user names

    def over(self, names: Any) -> bool:
        """True if this is a view of ``names``."""
        return self._names is names

    def _key(self, address: str) -> Any:
        return address

    def __getitem__(self, address: str) -> Sequence[str]:
        if not isinstance(address, str) or self._key(address) not in self._names:
            raise KeyError(address)
        return []

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and self._key(address) in self._names

    def __iter__(self) -> Iterator[str]:
        for name in list(self._names):
            address = _address(name)
            if address is not None:
                yield address

    def __len__(self) -> int:
        return sum(1 for _ in self)


class BytesNoAliases(NoAliases):
    """``NoAliases`` over bytes user names (Twisted's in-memory checker)."""

    def _key(self, address: str) -> Any:
        return address.encode("utf-8", "surrogateescape")


@implementer(IUserSource)
class InMemoryDatabaseUsers:
    """Implements: IUserSource over Twisted's ``InMemoryUsernamePasswordDatabaseDontUse``
    (its public ``users`` dict, live: ``addUser`` later is seen at once)."""

    def __init__(self, checker: InMemoryUsernamePasswordDatabaseDontUse) -> None:
        self._view = BytesNoAliases(checker.users)

    def mail_users(self) -> Mapping[str, Sequence[str]]:
        return self._view


@implementer(IUserSource)
class FilePasswordUsers:
    """Implements: IUserSource over Twisted's ``FilePasswordDB``: the user field of each
    line of its file, read again when the file's size or time changes (as mailhost's
    own passwd file is); a missing file has no users."""

    def __init__(self, checker: FilePasswordDB) -> None:
        self.checker = checker
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, Sequence[str]] = {}

    def mail_users(self) -> Mapping[str, Sequence[str]]:
        try:
            st = os.stat(self.checker.filename)
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            self._users = self._read() if stamp is not None else {}
        return self._users

    def _read(self) -> dict[str, Sequence[str]]:
        delim, field = self.checker.delim, self.checker.ufield
        try:
            with open(self.checker.filename, "rb") as f:
                lines = f.read().splitlines()
        except OSError:
            return {}
        users: dict[str, Sequence[str]] = {}
        for line in lines:
            parts = line.rstrip().split(delim)
            if field < len(parts):
                name = parts[field] if self.checker.caseSensitive else parts[field].lower()
                address = _address(name)
                if address is not None:
                    users[address] = []
        return users


def user_source(checker: Any) -> IUserSource | None:
    """The users of ``checker``: itself if it declares ``IUserSource``, a reader for
    Twisted's in-memory and file checkers, else None (it cannot say who exists)."""
    if IUserSource.providedBy(checker):
        return checker
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        return InMemoryDatabaseUsers(checker)
    if isinstance(checker, FilePasswordDB):
        return FilePasswordUsers(checker)
    return None


class NoUserSource(ValueError):
    """Checkers were given, but none can say who its users are."""


def users_of(checkers: Sequence[Any]) -> UsersSource:
    """The ``users`` callable of a ``UserDirectory`` over the users of ``checkers``:
    one checker's own mapping, or the union of several (rebuilt only when one of them
    hands out a new mapping). ``NoUserSource`` names the fix when none has users."""
    sources = [s for s in (user_source(c) for c in checkers) if s is not None]
    if not sources:
        names = ", ".join(type(c).__name__ for c in checkers) or "none"
        raise NoUserSource(
            f"makeService: no checker says who its users are (checkers: {names}), so SMTP "
            "would refuse every recipient; declare mailhost.IUserSource on a checker, or "
            "pass directory= (a mailhost.UserDirectory or your own IUserDirectory)")
    if len(sources) == 1:
        return sources[0].mail_users
    cache: list[Any] = [None, {}]

    def union() -> Mapping[str, Sequence[str]]:
        parts = [s.mail_users() for s in sources]
        if cache[0] is None or any(a is not b for a, b in zip(cache[0], parts, strict=True)):
            merged: dict[str, list[str]] = {}
            for part in parts:
                for user, extra in part.items():
                    merged.setdefault(user, []).extend(extra)
            cache[0], cache[1] = parts, merged
        return cache[1]  # type: ignore[no-any-return]

    return union


def directory_among(checkers: Sequence[Any]) -> Any:
    """The first checker that is also an ``IUserDirectory`` (it decides delivery
    itself), or None."""
    for checker in checkers:
        if IUserDirectory.providedBy(checker):
            return checker
    return None
