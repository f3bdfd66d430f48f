"""Credential checkers: the passwd file (argon2id) and an in-memory one for tests.

Both implement ``ICredentialsChecker`` for ``IUsernamePassword`` and resolve to the
canonical (lower-cased) user address as the avatar id. argon2 runs in a thread: it
is deliberately slow and must not stall the reactor.
"""

from __future__ import annotations

import hmac

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, threads
from zope.interface import implementer

from mailhost.auth.hashing import VerificationCache, verify_password
from mailhost.auth.passwd import PasswdFile, normalize_address


def _text(value: str | bytes) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


@implementer(ICredentialsChecker)
class PasswdFileChecker:
    """Implements: ICredentialsChecker over a PasswdFile."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, passwd: PasswdFile, cache: VerificationCache | None = None) -> None:
        self.passwd = passwd
        self.cache = cache or VerificationCache()

    def requestAvatarId(self, credentials: IUsernamePassword) -> defer.Deferred:
        user = normalize_address(_text(credentials.username))
        password = _text(credentials.password)
        entry = self.passwd.get(user)
        if entry is None:
            return defer.fail(UnauthorizedLogin("unknown user or wrong password"))
        if self.cache.hit(user, entry.password_hash, password):
            return defer.succeed(user)

        def checked(ok: bool) -> str:
            if not ok:
                raise UnauthorizedLogin("unknown user or wrong password")
            self.cache.remember(user, entry.password_hash, password)
            return user

        d = threads.deferToThread(verify_password, entry.password_hash, password)
        return d.addCallback(checked)


@implementer(ICredentialsChecker)
class InMemoryChecker:
    """Implements: ICredentialsChecker over a dict of plaintext passwords (tests, embedding)."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: dict[str, str] | None = None) -> None:
        self.users = {normalize_address(u): p for u, p in (users or {}).items()}

    def add_user(self, user: str, password: str) -> None:
        self.users[normalize_address(user)] = password

    def requestAvatarId(self, credentials: IUsernamePassword) -> defer.Deferred:
        user = normalize_address(_text(credentials.username))
        expected = self.users.get(user)
        given = _text(credentials.password).encode("utf-8", "surrogateescape")
        if expected is not None and hmac.compare_digest(expected.encode("utf-8"), given):
            return defer.succeed(user)
        return defer.fail(UnauthorizedLogin("unknown user or wrong password"))
