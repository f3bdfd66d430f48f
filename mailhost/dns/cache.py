"""``CachingLookup``: answers kept for their TTL, negative ones too (RFC 2308).

Why a cache of our own rather than ``twisted.names.cache.CacheResolver``: that one
caches ``(answers, authority, additional)`` tuples of ``IResolver`` lookups, and our
answers carry what those drop (the AD bit, NXDOMAIN versus NODATA). It also has no
bound on its size.

- Positive answers live for their TTL, clamped to [``min_ttl``, ``max_ttl``]; NXDOMAIN
  and NODATA for the SOA minimum, at most ``max_negative_ttl``.
- Temporary failures are not cached: the next message asks again.
- Concurrent lookups of the same (name, type) share one query.
- At most ``max_entries`` answers; the least recently used goes first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import cast

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhost.dns.interfaces import Answer, IDNSLookup


@implementer(IDNSLookup)
class CachingLookup:
    """Implements: IDNSLookup, in front of another IDNSLookup."""

    def __init__(self, upstream: IDNSLookup, clock: IReactorTime | None = None,
                 max_entries: int = 10000, min_ttl: float = 0.0, max_ttl: float = 86400.0,
                 max_negative_ttl: float = 3600.0) -> None:
        if clock is None:
            from twisted.internet import reactor as global_reactor

            clock = cast(IReactorTime, global_reactor)
        self.upstream = upstream
        self.clock: IReactorTime = clock
        self.max_entries = max_entries
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.max_negative_ttl = max_negative_ttl
        self._entries: OrderedDict[tuple[str, str], tuple[float, Answer]] = OrderedDict()
        self._inflight: dict[tuple[str, str], list[defer.Deferred[Answer]]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, name: str, rtype: str) -> defer.Deferred[Answer]:
        key = (name.strip().rstrip(".").lower(), rtype)
        now = self.clock.seconds()
        entry = self._entries.get(key)
        if entry is not None:
            expires, answer = entry
            if expires > now:
                self._entries.move_to_end(key)
                self.hits += 1
                return defer.succeed(answer)
            del self._entries[key]
        self.misses += 1
        waiting = self._inflight.get(key)
        result: defer.Deferred[Answer] = defer.Deferred()
        if waiting is not None:
            waiting.append(result)
            return result
        self._inflight[key] = [result]
        self.upstream.lookup(name, rtype).addBoth(self._settle, key)
        return result

    def _settle(self, outcome: Answer | Failure, key: tuple[str, str]) -> None:
        waiters = self._inflight.pop(key, [])
        if isinstance(outcome, Answer):
            self._store(key, outcome)
        for d in waiters:
            d.callback(outcome)  # a Failure errbacks
        return None

    def _store(self, key: tuple[str, str], answer: Answer) -> None:
        if answer.records:
            ttl = min(max(answer.ttl, self.min_ttl), self.max_ttl)
        else:
            ttl = min(answer.ttl, self.max_negative_ttl)
        if ttl <= 0:
            return
        self._entries[key] = (self.clock.seconds() + ttl, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
