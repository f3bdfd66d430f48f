"""Failed-login throttling per client, shared by SMTP, POP3 and IMAP.

Each failure within ``window`` seconds adds delay (1 s, 2 s, 4 s ... capped), and
after ``max_failures`` the client is refused outright for ``lockout`` seconds, like
Dovecot's auth penalty plus fail2ban in one. A success clears the client.

A client is counted as ``mailhost.netkey.client_key`` has it: an IPv4 address or an
IPv6 /64, as the connection limits do, so hopping between the addresses of one /64
buys an attacker nothing.

The tables of clients are bounded. When they are full, one record is evicted: an
expired one, else the client that has been failing (not yet locked) and was touched
longest ago, and a locked client only when every tracked client is locked (then the
oldest lock). Never the whole table, as before: a flood of new addresses must not be
a way to unlock the addresses already locked.

The throttle also remembers which users logged in from which client (``known_good``),
so that ``priority`` can put their password checks ahead of a flood's
(``mailhost.auth.verify_queue``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailhost.netkey import client_key
from mailhost.settings import AuthSettings

#: ``priority`` values: lower is checked first.
KNOWN_GOOD, KNOWN_USER, NO_FAILURES, FAILING = 0, 1, 2, 3


@dataclass
class _Record:
    failures: int
    first: float
    locked_until: float = 0.0


class LoginThrottle:
    """Failure counts, delays and lockouts per client, plus the known-good logins."""

    def __init__(self, max_failures: int = 5, window: float = 300.0, lockout: float = 300.0,
                 max_delay: float = 8.0, clock: Callable[[], float] = time.monotonic,
                 max_tracked: int = 100000, known_good_ttl: float = 30 * 86400.0) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.max_delay = max_delay
        self.known_good_ttl = known_good_ttl
        self._clock = clock
        # Clients with failures, not locked; least recently touched first.
        self._records: OrderedDict[str, _Record] = OrderedDict()
        # Locked clients, in the order they were locked.
        self._locked: OrderedDict[str, _Record] = OrderedDict()
        self._max_tracked = max_tracked
        # (user, client key) -> time of the last successful login, oldest first.
        self._good: OrderedDict[tuple[str, str], float] = OrderedDict()
        # user -> time of the user's last successful login from any client.
        self._good_users: OrderedDict[str, float] = OrderedDict()

    def use_settings(self, settings: AuthSettings) -> None:
        """Reload: new limits apply from now on; the clients tracked stay tracked."""
        self.max_failures = settings.max_failures
        self.window = settings.failure_window
        self.lockout = settings.lockout
        self.known_good_ttl = settings.known_good_ttl

    def _expired(self, rec: _Record, now: float) -> bool:
        if rec.locked_until:
            return rec.locked_until <= now
        return now - rec.first > self.window

    def _record(self, key: str) -> _Record | None:
        table = self._locked if key in self._locked else self._records
        rec = table.get(key)
        if rec is None:
            return None
        if self._expired(rec, self._clock()):
            del table[key]
            return None
        return rec

    def locked(self, address: str) -> bool:
        """True while the client is refused outright."""
        rec = self._record(client_key(address))
        return bool(rec and rec.locked_until)

    def delay(self, address: str) -> float:
        """Seconds to wait before answering this client's next login attempt."""
        rec = self._record(client_key(address))
        if rec is None or rec.failures == 0:
            return 0.0
        return min(self.max_delay, 2.0 ** (rec.failures - 1))

    def failures(self, address: str) -> int:
        """Failures counted for this client now."""
        rec = self._record(client_key(address))
        return rec.failures if rec is not None else 0

    def failed(self, address: str) -> None:
        if self.max_failures <= 0:
            return
        key = client_key(address)
        rec = self._record(key)
        now = self._clock()
        if rec is None:
            if len(self._records) + len(self._locked) >= self._max_tracked:
                self._evict(now)
            rec = self._records[key] = _Record(0, now)
        elif key in self._records:
            self._records.move_to_end(key)
        rec.failures += 1
        if rec.failures >= self.max_failures and not rec.locked_until:
            rec.locked_until = now + self.lockout
            del self._records[key]
            self._locked[key] = rec

    def _evict(self, now: float) -> None:
        """Make room for one record (see the module docstring); never every record."""
        for table in (self._records, self._locked):
            while table:  # expired records sit at the old end, mostly
                key, rec = next(iter(table.items()))
                if not self._expired(rec, now):
                    break
                del table[key]
        while len(self._records) + len(self._locked) >= self._max_tracked:
            (self._records or self._locked).popitem(last=False)

    def succeeded(self, address: str, user: str | None = None) -> None:
        key = client_key(address)
        self._records.pop(key, None)
        self._locked.pop(key, None)
        if user is not None and self.known_good_ttl > 0:
            now = self._clock()
            user = user.strip().lower()
            self._remember(self._good, (user, key), now)
            self._remember(self._good_users, user, now)

    def _remember(self, table: OrderedDict[Any, float], k: object, now: float) -> None:
        table[k] = now
        table.move_to_end(k)
        while len(table) > self._max_tracked:
            table.popitem(last=False)

    def _fresh(self, table: OrderedDict[Any, float], k: object) -> bool:
        stamp = table.get(k)
        if stamp is None:
            return False
        if self._clock() - stamp > self.known_good_ttl:
            del table[k]
            return False
        return True

    def known_good(self, address: str, user: str) -> bool:
        """True if ``user`` logged in from this client within ``known_good_ttl``."""
        return self._fresh(self._good, (user.strip().lower(), client_key(address)))

    def priority(self, address: str, user: str) -> int:
        """How soon this attempt's password check should run (lower first), for a
        client without failures now: ``KNOWN_GOOD`` if ``user`` logged in from this
        client before (within ``known_good_ttl``), ``KNOWN_USER`` if it logged in from
        anywhere, else ``NO_FAILURES``; for a failing client ``FAILING`` plus its
        failure count."""
        failures = self.failures(address)
        if failures:
            return FAILING + failures
        if self.known_good(address, user):
            return KNOWN_GOOD
        if self._fresh(self._good_users, user.strip().lower()):
            return KNOWN_USER
        return NO_FAILURES
