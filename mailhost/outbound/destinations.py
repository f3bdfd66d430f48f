"""Backoff that no number of sessions can bypass: the state of each destination.

Issue 21: five sessions failing at slightly different times once made 280,000
connections in 30 s, none of them an attempt. So:

- every session that fails before MAIL (DNS, connect, greeting, EHLO, TLS) counts as
  one failure of its *destination* (the domain) and holds the destination off: no new
  session for ``min(retry_initial, 60) * 2**(failures-1)`` seconds, at most
  ``hold_off_max`` (retry.hold_off_delay). Sessions that were already running when a
  failure was counted belong to the same *cohort* and do not count again; while the
  count is not zero, one session at a time probes the destination (the scheduler's
  dispatch), and one that delivers resets the count;
- a session that transacted but ended in an error (a timeout, a reply out of turn)
  counts as a failure too;
- new connections to one host are capped at ``connect_rate`` per second after a
  burst of ``connect_burst``, however many sessions want one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.task import deferLater
from twisted.logger import Logger

from mailhost.outbound.retry import hold_off_delay
from mailhost.settings import OutboundSettings

log = Logger()

#: Connection buckets kept before the full ones are dropped.
BUCKETS = 4096


class Destinations:
    """Failures, cohorts and hold-offs per destination domain, and connection token
    buckets per host. ``woken`` is called when a hold-off ends (to dispatch again)."""

    def __init__(self, settings: OutboundSettings, reactor: Any,
                 woken: Callable[[], None]) -> None:
        self.settings = settings  # replaced on reload
        self.reactor = reactor
        self.woken = woken
        # Failed sessions in a row, and the cohort number (bumped at each counted
        # failure or success; a session counts only if nothing was counted since it
        # started).
        self.failures: dict[str, int] = {}
        self._cohort: dict[str, int] = {}
        # Domains no host of which took a connection lately: until when no new session
        # is tried for them (mail arriving meanwhile waits for the next try).
        self.down: dict[str, float] = {}
        self._wake: Any = None
        # Connection token buckets per host: (tokens, when).
        self._buckets: dict[str, tuple[float, float]] = {}

    def cohort(self, domain: str) -> int:
        """The cohort a session starting now belongs to."""
        return self._cohort.get(domain, 0)

    def held_off(self, domain: str, now: float) -> bool:
        """Whether no new session may start for ``domain`` now (a hold-off that has run
        out is forgotten)."""
        if domain not in self.down:
            return False
        if self.down[domain] > now:
            return True
        del self.down[domain]
        return False

    def probing(self, domain: str) -> bool:
        """Whether ``domain``'s last session failed (one probe at a time until one
        delivers, as Postfix lowers its concurrency to 1)."""
        return bool(self.failures.get(domain))

    def session_ok(self, domain: str) -> None:
        if self.failures.pop(domain, 0):
            log.info("outbound: {domain} takes mail again", domain=domain)
        self._cohort[domain] = self._cohort.get(domain, 0) + 1
        self.down.pop(domain, None)

    def session_failed(self, domain: str, cohort: int) -> None:
        """A session to ``domain`` of ``cohort`` failed: count it (once per cohort) and
        hold the destination off."""
        if self._cohort.get(domain, 0) == cohort:
            self._cohort[domain] = cohort + 1
            n = self.failures[domain] = self.failures.get(domain, 0) + 1
            self.hold_off(domain, n)
        elif domain not in self.down and self.failures.get(domain):
            self.hold_off(domain, self.failures[domain])

    def hold_off(self, domain: str, failures: int = 1) -> None:
        """Start no new session for ``domain`` for a while (like Postfix's dead
        destinations): mail arriving meanwhile waits for the next try instead of
        costing a connection each; ``clear`` (a flush) ends it."""
        now = self.reactor.seconds()
        until = now + max(hold_off_delay(failures, self.settings), 1.0)
        self.down[domain] = until
        log.info(
            "outbound: {domain} held off for {delay:.0f} s after {failures} failed sessions",
            domain=domain, delay=until - self.reactor.seconds(), failures=failures,
        )
        if self._wake is None or not self._wake.active() or self._wake.getTime() > until:
            if self._wake is not None and self._wake.active():
                self._wake.cancel()
            self._wake = self.reactor.callLater(until - self.reactor.seconds(), self._wake_up)

    def _wake_up(self) -> None:
        self._wake = None
        now = self.reactor.seconds()
        later = [t for t in self.down.values() if t > now]
        if later:
            self._wake = self.reactor.callLater(min(later) - now, self._wake_up)
        self.woken()

    def clear(self) -> None:
        """End every hold-off (an operator who flushes wants a real try now)."""
        self.down.clear()

    def stop(self) -> None:
        if self._wake is not None and self._wake.active():
            self._wake.cancel()
        self._wake = None

    async def connect_slot(self, host: str, stopping: Callable[[], bool]) -> None:
        """Wait for a token of ``host``'s bucket: ``connect_rate`` new connections a
        second after a burst of ``connect_burst``, whatever the number of sessions."""
        rate = max(self.settings.connect_rate, 0.001)
        burst = float(max(self.settings.connect_burst, 1))
        while not stopping():
            now = self.reactor.seconds()
            tokens, when = self._buckets.get(host, (burst, now))
            tokens = min(burst, tokens + (now - when) * rate)
            if tokens >= 1.0:
                self._buckets[host] = (tokens - 1.0, now)
                if len(self._buckets) > BUCKETS:
                    self._prune_buckets(now, rate, burst)
                return
            self._buckets[host] = (tokens, now)
            await deferLater(self.reactor, (1.0 - tokens) / rate)

    def _prune_buckets(self, now: float, rate: float, burst: float) -> None:
        full = [h for h, (t, w) in self._buckets.items() if t + (now - w) * rate >= burst]
        for h in full:
            del self._buckets[h]
