"""Failed-login throttling per client address, shared by SMTP, POP3 and IMAP.

Each failure within ``window`` seconds adds delay (1 s, 2 s, 4 s ... capped), and
after ``max_failures`` the address is refused outright for ``lockout`` seconds, like
Dovecot's auth penalty plus fail2ban in one. A success clears the address.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Record:
    failures: int
    first: float
    locked_until: float = 0.0


class LoginThrottle:
    def __init__(self, max_failures: int = 5, window: float = 300.0, lockout: float = 300.0,
                 max_delay: float = 8.0, clock: Callable[[], float] = time.monotonic,
                 max_tracked: int = 100000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.max_delay = max_delay
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._max_tracked = max_tracked

    def _record(self, address: str) -> _Record | None:
        rec = self._records.get(address)
        if rec is None:
            return None
        now = self._clock()
        if rec.locked_until and rec.locked_until <= now:
            del self._records[address]
            return None
        if not rec.locked_until and now - rec.first > self.window:
            del self._records[address]
            return None
        return rec

    def locked(self, address: str) -> bool:
        """True while the address is refused outright."""
        rec = self._record(address)
        return bool(rec and rec.locked_until)

    def delay(self, address: str) -> float:
        """Seconds to wait before answering this address's next login attempt."""
        rec = self._record(address)
        if rec is None or rec.failures == 0:
            return 0.0
        return min(self.max_delay, 2.0 ** (rec.failures - 1))

    def failed(self, address: str) -> None:
        if self.max_failures <= 0:
            return
        if len(self._records) >= self._max_tracked:
            self._records.clear()
        rec = self._record(address)
        now = self._clock()
        if rec is None:
            rec = self._records[address] = _Record(0, now)
        rec.failures += 1
        if rec.failures >= self.max_failures:
            rec.locked_until = now + self.lockout

    def succeeded(self, address: str) -> None:
        self._records.pop(address, None)
