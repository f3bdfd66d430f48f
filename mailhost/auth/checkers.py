"""Credential checkers: the passwd file (argon2id) and an in-memory one for tests.

Both implement ``ICredentialsChecker`` for ``IUsernamePassword`` (bytes or str, as
cred hands them) and resolve to the canonical (lower-cased) user address as the avatar
id. Both declare ``IUserSource`` too: the users who can log in are the users who
receive mail (``mailhost.auth.users``). argon2 runs in a thread: it
is deliberately slow and must not stall the reactor. Each check costs tens of MiB and
real CPU, so checks run in their own small pool: a flood of logins from many
addresses queues there instead of exhausting memory or starving store fsyncs, and
the queue (``verify_queue.VerifyQueue``) serves known-good logins before a flood.
An unknown user costs the same as a wrong password, so timing does not tell an
attacker which users exist.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailhost.auth.hashing import VerificationCache, hash_password, verify_password
from mailhost.auth.passwd import PasswdFile, normalize_address
from mailhost.auth.users import IUserSource, NoAliases
from mailhost.auth.verify_queue import VerifyQueue, priority_of


def _text(value: str | bytes) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


def _fail() -> str:
    raise UnauthorizedLogin("unknown user or wrong password")


@implementer(ICredentialsChecker, IUserSource)
class PasswdFileChecker:
    """Implements: ICredentialsChecker, IUserSource over a PasswdFile."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, passwd: PasswdFile, cache: VerificationCache | None = None,
                 threadpool: ThreadPool | None = None, reactor: Any = None) -> None:
        self.passwd = passwd
        self.cache = cache or VerificationCache()
        self.threadpool = threadpool
        self.reactor = reactor
        self.queue = VerifyQueue(threadpool, reactor)
        self._dummy_hash: str | None = None

    def mail_users(self) -> Mapping[str, Sequence[str]]:
        """The passwd file's users and their ``aliases=`` (one dict until it changes)."""
        return self.passwd.aliases_by_user()

    def _verify(self, password_hash: str, password: str, priority: int) -> defer.Deferred[bool]:
        return self.queue.submit(priority, verify_password, password_hash, password)

    def requestAvatarId(self, credentials: IUsernamePassword) -> defer.Deferred[Any]:
        user = normalize_address(_text(credentials.username))
        password = _text(credentials.password)
        priority = priority_of(credentials)
        entry = self.passwd.get(user)
        if entry is None:
            # Spend the same work as a real check, then fail.
            if self._dummy_hash is None:
                self._dummy_hash = hash_password(os.urandom(16).hex())
            d = self._verify(self._dummy_hash, password, priority)
            return d.addCallback(lambda _: _fail())
        if self.cache.hit(user, entry.password_hash, password):
            return defer.succeed(user)

        def checked(ok: bool) -> str:
            if not ok:
                _fail()
            self.cache.remember(user, entry.password_hash, password)
            return user

        return self._verify(entry.password_hash, password, priority).addCallback(checked)


@implementer(ICredentialsChecker, IUserSource)
class InMemoryChecker:
    """Implements: ICredentialsChecker, IUserSource over a dict of plaintext passwords
    (tests, embedding). ``users`` may be changed in place; delivery sees it at once."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: dict[str, str] | None = None) -> None:
        self.users = {normalize_address(u): p for u, p in (users or {}).items()}
        self._view = NoAliases(self.users)

    def mail_users(self) -> Mapping[str, Sequence[str]]:
        if not self._view.over(self.users):  # ``users`` was replaced wholesale
            self._view = NoAliases(self.users)
        return self._view

    def add_user(self, user: str, password: str) -> None:
        self.users[normalize_address(user)] = password

    def requestAvatarId(self, credentials: IUsernamePassword) -> defer.Deferred[Any]:
        user = normalize_address(_text(credentials.username))
        expected = self.users.get(user)
        given = _text(credentials.password).encode("utf-8", "surrogateescape")
        if expected is not None and hmac.compare_digest(expected.encode("utf-8"), given):
            return defer.succeed(user)
        return defer.fail(UnauthorizedLogin("unknown user or wrong password"))
