"""Open connections waiting for more mail for their domain (the per-destination
connection cache, like Postfix's ``smtp_connection_cache_time_limit``): reusing one
saves a route lookup, a connect, the greeting and EHLO for mail that often follows
soon. A relay client waits through ``wait``; the scheduler wakes one per ready job."""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import defer


class IdleConnections:
    """Per domain, the Deferreds of the connections waiting for a job, oldest first."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._waiting: dict[str, deque[defer.Deferred]] = {}

    def wait(self, domain: str, timeout: float) -> defer.Deferred:
        """Fires with True when ``wake`` has a job for ``domain``, with False after
        ``timeout`` seconds or at ``release_all``; cancelling it forgets it."""
        waiting = self._waiting.setdefault(domain, deque())

        def forget(d: defer.Deferred) -> None:
            if timer.active():
                timer.cancel()
            if d in waiting:
                waiting.remove(d)
            if not waiting and self._waiting.get(domain) is waiting:
                del self._waiting[domain]

        def expire() -> None:
            forget(d)
            d.callback(False)

        d: defer.Deferred = defer.Deferred(canceller=forget)
        timer = self.reactor.callLater(timeout, expire)
        def forgotten(result: Any) -> Any:
            forget(d)
            return result

        d.addBoth(forgotten)
        waiting.append(d)
        return d

    def wake(self, domain: str) -> bool:
        """Wake the oldest connection waiting for ``domain`` (it takes a job at once);
        False when none waits."""
        waiting = self._waiting.get(domain)
        if not waiting:
            return False
        waiting.popleft().callback(True)
        return True

    def release_all(self) -> None:
        """Stopping: every waiting connection quits."""
        for waiting in list(self._waiting.values()):
            while waiting:
                waiting.popleft().callback(False)
