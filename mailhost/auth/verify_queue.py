"""The password-check queue: argon2 checks run a few at a time, most deserving first.

argon2 is slow and memory-hard on purpose, so checks run in a small thread pool
(two threads by default). A plain pool is first come, first served: 200 wrong logins
from 200 addresses once kept a real user's login waiting 19 s behind them. Here every
check carries a priority (``mailhost.auth.throttle.LoginThrottle.priority``) and waits
in a heap instead of the pool's FIFO; at most ``workers`` checks are in the pool at a
time, and when one ends the most deserving waiting check goes next:

- a user logging in again from a client it logged in from before (and which is not
  failing now) goes first: a flood, which does not know that pairing, cannot get ahead
  of it; it waits at most for the checks already running;
- then a user who logged in before from anywhere, from a client without failures (a
  flood that names real users gets here once per address: its first failure moves
  that address down);
- then other clients without failures, first come first served;
- then failing clients, fewest failures first.

What remains: a user who never logged in (or not within ``auth.known_good_ttl``)
waits behind a flood's first attempts from addresses that have not failed yet.

Credentials carry their priority through cred as ``IPrioritizedCredentials``; any
other credentials get ``DEFAULT_PRIORITY``.
"""

from __future__ import annotations

import heapq
import hmac
import itertools
from collections.abc import Callable
from typing import Any

from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.internet import defer, threads
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import Attribute, implementer

from mailhost.auth.throttle import NO_FAILURES

DEFAULT_PRIORITY = NO_FAILURES


class IPrioritizedCredentials(IUsernamePassword):
    """A user name and password with the priority of their check."""

    priority = Attribute("int: lower is checked sooner (see LoginThrottle.priority)")


@implementer(IPrioritizedCredentials)
class PrioritizedUsernamePassword(UsernamePassword):
    """Implements: IPrioritizedCredentials."""

    def __init__(self, username: Any, password: Any, priority: int) -> None:
        super().__init__(username, password)
        self.priority = priority

    def checkPassword(self, password: Any) -> bool:  # noqa: N802 (IUsernamePassword)
        """Compare in constant time with a stored password given as bytes (cred's
        convention, e.g. Twisted's own checkers) or as str (UTF-8)."""
        if isinstance(password, str):
            password = password.encode("utf-8", "surrogateescape")
        mine = self.password
        if isinstance(mine, str):
            mine = mine.encode("utf-8", "surrogateescape")
        if not isinstance(password, bytes) or not isinstance(mine, bytes):
            return False
        return hmac.compare_digest(mine, password)


def priority_of(credentials: Any) -> int:
    if IPrioritizedCredentials.providedBy(credentials):
        return int(credentials.priority)
    return DEFAULT_PRIORITY


class VerifyQueue:
    """Runs blocking checks in ``threadpool``, ``workers`` at a time, by priority."""

    def __init__(self, threadpool: ThreadPool | None, reactor: Any = None,
                 workers: int | None = None) -> None:
        self.threadpool = threadpool
        self.reactor = reactor
        if workers is None:
            workers = threadpool.max if threadpool is not None else 2
        self.workers = max(1, workers)
        self.running = 0
        self._waiting: list[tuple[int, int, defer.Deferred[Any], Callable[..., Any],
                                 tuple[Any, ...]]] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, priority: int, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """Deferred firing with ``fn(*args)``, run in a thread when its turn comes."""
        d: defer.Deferred[Any] = defer.Deferred()
        heapq.heappush(self._waiting, (priority, next(self._seq), d, fn, args))
        self._next()
        return d

    def _next(self) -> None:
        while self.running < self.workers and self._waiting:
            _, _, d, fn, args = heapq.heappop(self._waiting)
            self.running += 1
            self._run(fn, args).addBoth(self._done, d)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> defer.Deferred[Any]:
        if self.threadpool is None:
            return threads.deferToThread(fn, *args)
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor
        return threads.deferToThreadPool(reactor, self.threadpool, fn, *args)

    def _done(self, result: Any, d: defer.Deferred[Any]) -> None:
        self.running -= 1
        self._next()
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
