"""Password hashing (argon2id) with a cache of recent successful verifications.

argon2 costs tens of milliseconds of CPU by design. A client that logs in many times
a second (a test suite, a busy webmail) must not pay that each time, so a success is
remembered for a while, keyed by an HMAC of the password under a per-process random
key: the cache never holds a password or anything that can be replayed elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Constant-time check; False for a wrong password or an unusable hash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


class VerificationCache:
    """Remembers (user, hash, password) triples that verified, for ``ttl`` seconds."""

    def __init__(self, ttl: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 10000) -> None:
        self.ttl = ttl
        self._clock = clock
        self._key = os.urandom(32)
        self._entries: dict[bytes, float] = {}
        self._max = max_entries

    def _token(self, user: str, password_hash: str, password: str) -> bytes:
        msg = b"\0".join(s.encode("utf-8", "surrogateescape") for s in (user, password_hash, password))
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def hit(self, user: str, password_hash: str, password: str) -> bool:
        if self.ttl <= 0:
            return False
        token = self._token(user, password_hash, password)
        expires = self._entries.get(token)
        if expires is None:
            return False
        if expires < self._clock():
            del self._entries[token]
            return False
        return True

    def remember(self, user: str, password_hash: str, password: str) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self._max:
            now = self._clock()
            self._entries = {k: v for k, v in self._entries.items() if v >= now}
            if len(self._entries) >= self._max:
                self._entries.clear()
        self._entries[self._token(user, password_hash, password)] = self._clock() + self.ttl
