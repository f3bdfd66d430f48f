"""What must hold for the whole server, kept so across workers.

The login throttle, the per-user rate limits and the connection counts decide
synchronously (a connection is admitted or refused in ``buildProtocol``, a login
is throttled before its password check), so a round trip to a shared store or to the
supervisor on every decision is not an option. Each worker therefore keeps the
tables it has always kept, and *replicates*: whatever it counts it also publishes
(``channel.py``), and it applies what the other workers publish to its own tables
through the unshared base methods. A lockout after five failures spread over two
workers is a lockout in both; a client's connections are counted over all workers.
The window in which two workers can both admit the one connection too many is the
pipe's latency (well under a millisecond); that is the price of never waiting.

The classes take over an already built object (``adopt``): ``makeService`` builds
the throttle, limiter and rate limiter as it always does, and only a worker swaps in
the replicating subclass, with the same state and settings.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

from mailhost.abuse.ratelimit import RateLimiter
from mailhost.auth.throttle import LoginThrottle
from mailhost.limits import ConnectionLimiter, KindLimits
from mailhost.netkey import client_key

_T = TypeVar("_T")


def _adopt(cls: type[_T], original: Any, channel: Any) -> _T:
    """An instance of ``cls`` (a subclass of ``original``'s class) holding
    ``original``'s state, publishing on ``channel``."""
    shared = cls.__new__(cls)
    shared.__dict__.update(original.__dict__)
    shared.channel = channel  # type: ignore[attr-defined]
    shared.listen()  # type: ignore[attr-defined]
    return shared


class SharedThrottle(LoginThrottle):
    """A ``LoginThrottle`` whose failures and successes count in every worker."""

    channel: Any

    @classmethod
    def adopt(cls, throttle: LoginThrottle, channel: Any) -> SharedThrottle:
        return _adopt(cls, throttle, channel)

    def listen(self) -> None:
        self.channel.on("throttle.failed", lambda _src, address: LoginThrottle.failed(
            self, address))
        self.channel.on("throttle.ok", lambda _src, address, user: LoginThrottle.succeeded(
            self, address, user))

    def failed(self, address: str) -> None:
        super().failed(address)
        self.channel.publish("throttle.failed", address)

    def succeeded(self, address: str, user: str | None = None) -> None:
        super().succeeded(address, user)
        self.channel.publish("throttle.ok", address, user)


class SharedRateLimiter(RateLimiter):
    """A ``RateLimiter`` whose buckets drain for messages sent through any worker."""

    channel: Any

    @classmethod
    def adopt(cls, limiter: RateLimiter, channel: Any) -> SharedRateLimiter:
        return _adopt(cls, limiter, channel)

    def listen(self) -> None:
        self.channel.on("rate.take", lambda _src, user: RateLimiter.take_message(self, user))

    def take_message(self, user: str) -> float:
        wait = super().take_message(user)
        if wait == 0.0:
            self.channel.publish("rate.take", user)
        return wait


class SharedConnectionLimiter(ConnectionLimiter):
    """A ``ConnectionLimiter`` counting the connections of every worker.

    Another worker's connections are added to ``total`` and ``per_client`` (and take
    a token of the connection rate) as that worker reports them, and remembered by
    worker, so that a worker that dies takes its counts with it ("worker.gone").
    Eviction stays local: a worker closes only its own idle sessions.

    Opens and closes travel as a tally (``WorkerChannel.tally``): one ``conns`` row
    per protocol and client address per batch, ``[kind, host, opens, closes]``,
    applied opens first (a close in the batch may be of a connection opened in it).
    """

    channel: Any
    remote: dict[int, Counter[tuple[str, str]]]

    @classmethod
    def adopt(cls, limiter: ConnectionLimiter, channel: Any) -> SharedConnectionLimiter:
        return _adopt(cls, limiter, channel)

    def listen(self) -> None:
        self.remote = {}
        self.channel.on("conns", self._remote_conns)
        self.channel.on("worker.gone", self._gone)

    def admit(self, kind: str, host: str, limits: KindLimits) -> str | None:
        why = super().admit(kind, host, limits)
        if why is None:
            self.channel.tally("conns", (kind, host), 0, 2)
        return why

    def release(self, kind: str, host: str) -> None:
        super().release(kind, host)
        self.channel.tally("conns", (kind, host), 1, 2)

    def _remote_conns(self, source: int, rows: list[list[Any]]) -> None:
        for kind, host, opens, closes in rows:
            for _ in range(opens):
                self._remote_open(source, kind, host)
            for _ in range(closes):
                self._remote_close(source, kind, host)

    def _remote_open(self, source: int, kind: str, host: str) -> None:
        self.total[kind] = self.total.get(kind, 0) + 1
        if not self.is_exempt(host):
            key = client_key(host)
            self.per_client[(kind, key)] = self.per_client.get((kind, key), 0) + 1
            if self.rate > 0:
                self._take_token(key)
        self.remote.setdefault(source, Counter())[(kind, host)] += 1

    def _remote_close(self, source: int, kind: str, host: str) -> None:
        counts = self.remote.get(source)
        if not counts or counts[(kind, host)] <= 0:
            return
        counts[(kind, host)] -= 1
        ConnectionLimiter.release(self, kind, host)

    def _gone(self, source: int) -> None:
        for (kind, host), n in self.remote.pop(source, Counter()).items():
            for _ in range(n):
                ConnectionLimiter.release(self, kind, host)


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """A listening socket the supervisor bound and handed down (an inherited fd).

    ``adoptStreamPort`` duplicates the descriptor, so the inherited one is closed
    once adopted.
    """

    def __init__(self, reactor: Any, fd: int, family: int) -> None:
        self.reactor = reactor
        self.fd = fd
        self.family = family

    def listen(self, factory: Any) -> defer.Deferred:
        import os

        try:
            port = self.reactor.adoptStreamPort(self.fd, self.family, factory)
        except Exception:
            return defer.fail()
        try:
            os.close(self.fd)
        except OSError:
            pass
        return defer.succeed(port)
