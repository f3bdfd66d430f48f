"""Connection limits in front of every listener: per client address, overall, and rate.

One protocol-agnostic ``WrappingFactory`` sits in front of each listener's factory.
At accept time it counts connections per client address and overall, and takes a
token from the client address's bucket. Over a limit it answers with the protocol's
own refusal and closes, without ever building the wrapped protocol: a flood costs a
dict lookup and one write, not a session (no store, no timers, no auth state).

IPv6 clients are counted per /64, because one host usually owns a whole /64.
Networks in ``limits.exempt_networks`` (loopback by default, like Postfix's anvil
exceptions) skip the per-address count and rate, but still count towards the
overall limit.

Wiring, in ``mailhost.service.makeService``::

    limits = ConnectionLimits.from_config(config, reactor=reactor)
    root.wrap_factory = limits.wrap   # (kind, factory) -> factory
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

from mailhost.config import Config, ConfigError
from mailhost.wrapping import InterfaceCopyingWrapper

log = Logger()

KINDS = ("smtp", "submission", "pop3", "imap")

# Seconds a refused client gets to read the refusal (and finish a TLS handshake on an
# implicit-TLS port) before the connection is aborted.
REFUSAL_TIMEOUT = 10.0
# Seconds between two log lines about the same client being refused.
LOG_INTERVAL = 60.0


def refusal(kind: str, hostname: str, ip: str) -> bytes:
    """The protocol's own "too many connections" line for listener ``kind``."""
    if kind in ("smtp", "submission"):
        return f"421 4.3.2 {hostname} Too many connections from {ip}\r\n".encode()
    if kind == "pop3":
        return b"-ERR [SYS/TEMP] Too many connections\r\n"
    if kind == "imap":
        return b"* BYE [UNAVAILABLE] Too many connections\r\n"
    raise ValueError(f"unknown listener kind {kind!r}")


def client_key(host: str) -> str:
    """The unit a client is counted in: its IPv4 address, or its IPv6 /64."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


@dataclass(frozen=True)
class KindLimits:
    """Concurrent connection limits of one listener kind (0 means unlimited)."""

    max_connections: int
    max_per_ip: int


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class ConnectionLimiter:
    """The counters and token buckets shared by every limited listener of a process.

    ``rate`` is new connections per minute per client address over all listeners,
    ``burst`` the bucket size; ``rate == 0`` disables the rate limit.
    """

    def __init__(self, rate: float, burst: int, exempt: Iterable[str] = (),
                 clock: IReactorTime | None = None, max_tracked: int = 100000) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.clock = clock
        self.rate = rate / 60.0
        self.burst = max(1, burst)
        self.exempt = [ipaddress.ip_network(n, strict=False) for n in exempt]
        self.max_tracked = max_tracked
        self.total: dict[str, int] = {}
        self.per_client: dict[tuple[str, str], int] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._logged: dict[str, float] = {}
        self._exempt_cache: dict[str, bool] = {}

    def is_exempt(self, host: str) -> bool:
        # Asked twice per connection (admit, release); parsing the address is the cost.
        exempt = self._exempt_cache.get(host)
        if exempt is None:
            if len(self._exempt_cache) >= self.max_tracked:
                self._exempt_cache.clear()
            exempt = self._exempt_cache[host] = self._classify(host)
        return exempt

    def _classify(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            # Not an IP peer (UNIX socket, systemd activation): local by definition.
            return True
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.exempt)

    def admit(self, kind: str, host: str, limits: KindLimits) -> str | None:
        """Count a new connection; return None if admitted, else why it is refused."""
        total = self.total.get(kind, 0)
        if limits.max_connections and total >= limits.max_connections:
            return "max_connections"
        exempt = self.is_exempt(host)
        key = client_key(host)
        if not exempt:
            if limits.max_per_ip and self.per_client.get((kind, key), 0) >= limits.max_per_ip:
                return "max_connections_per_ip"
            if self.rate > 0 and not self._take_token(key):
                return "connection_rate"
        self.total[kind] = total + 1
        if not exempt:
            self.per_client[(kind, key)] = self.per_client.get((kind, key), 0) + 1
        return None

    def release(self, kind: str, host: str) -> None:
        """Forget a connection that ``admit`` counted."""
        self.total[kind] = max(0, self.total.get(kind, 0) - 1)
        if self.is_exempt(host):
            return
        k = (kind, client_key(host))
        left = self.per_client.get(k, 0) - 1
        if left > 0:
            self.per_client[k] = left
        else:
            self.per_client.pop(k, None)

    def _take_token(self, key: str) -> bool:
        now = self.clock.seconds()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_tracked:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(float(self.burst),
                                bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _prune(self, now: float) -> None:
        """Drop buckets that have refilled (they equal a fresh one); bound memory."""
        full = [k for k, b in self._buckets.items()
                if b.tokens + (now - b.stamp) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_tracked:
            # Still full of active clients: fail open rather than grow without bound.
            self._buckets.clear()

    def should_log(self, key: str) -> bool:
        """Rate-limit refusal log lines to one per client per LOG_INTERVAL."""
        now = self.clock.seconds()
        last = self._logged.get(key)
        if last is not None and now - last < LOG_INTERVAL:
            return False
        if len(self._logged) >= self.max_tracked:
            self._logged.clear()
        self._logged[key] = now
        return True


class _Refuser(Protocol):
    """Writes the refusal line, closes, and aborts a client that will not go away."""

    def __init__(self, line: bytes, clock: IReactorTime) -> None:
        self.line = line
        self.clock = clock
        self._abort: IDelayedCall | None = None

    def connectionMade(self) -> None:  # noqa: N802 (Twisted hook)
        self._abort = self.clock.callLater(REFUSAL_TIMEOUT, self.transport.abortConnection)
        self.transport.write(self.line)
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """Whatever the client says is ignored: no command runs on a refused connection."""

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self._abort = None


class _CountedProtocol(InterfaceCopyingWrapper):
    """An admitted connection; releases its count when it ends."""

    def __init__(self, factory: LimitingFactory, wrapped: Any, host: str) -> None:
        super().__init__(factory, wrapped)
        self.host = host

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.factory.limiter.release(self.factory.kind, self.host)
        super().connectionLost(reason)


class LimitingFactory(WrappingFactory):
    """Wraps one listener's factory: admits under the limits, refuses over them.

    Implements: IProtocolFactory.
    """

    def __init__(self, wrapped: IProtocolFactory, kind: str, limiter: ConnectionLimiter,
                 limits: KindLimits, hostname: str) -> None:
        super().__init__(wrapped)
        refusal(kind, hostname, "")  # reject an unknown kind now, not per connection
        self.kind = kind
        self.limiter = limiter
        self.limits = limits
        self.hostname = hostname
        self.refused = 0

    def buildProtocol(self, addr: Any) -> Protocol | None:  # noqa: N802
        host = getattr(addr, "host", None) or "unix"
        reason = self.limiter.admit(self.kind, host, self.limits)
        if reason is not None:
            self.refused += 1
            if self.limiter.should_log(client_key(host)):
                log.warn("connection refused kind={kind} client={client} reason={reason}",
                         event="connection_refused", kind=self.kind, client=host,
                         reason=reason)
            return _Refuser(refusal(self.kind, self.hostname, host), self.limiter.clock)
        try:
            inner = self.wrappedFactory.buildProtocol(addr)
        except BaseException:
            self.limiter.release(self.kind, host)
            raise
        if inner is None:
            self.limiter.release(self.kind, host)
            return None
        return _CountedProtocol(self, inner, host)

    def registerProtocol(self, p: Any) -> None:  # noqa: N802 (WrappingFactory hook)
        """Tracked by the limiter's counters instead of a dict of protocols."""

    def unregisterProtocol(self, p: Any) -> None:  # noqa: N802
        """See registerProtocol."""


class ConnectionLimits:
    """Per-kind limits from config over one shared ``ConnectionLimiter``.

    ``wrap`` is the ``wrap_factory(kind, factory)`` hook of ``makeService``.
    """

    def __init__(self, limiter: ConnectionLimiter, kinds: dict[str, KindLimits],
                 hostname: str) -> None:
        self.limiter = limiter
        self.kinds = kinds
        self.hostname = hostname

    @classmethod
    def from_config(cls, config: Config, reactor: IReactorTime | None = None,
                    ) -> ConnectionLimits:
        lim = config.limits
        try:
            limiter = ConnectionLimiter(lim.connection_rate, lim.connection_burst,
                                        lim.exempt_networks, clock=reactor)
        except ValueError as e:
            raise ConfigError(f"limits.exempt_networks: {e}") from None
        smtp = KindLimits(config.smtp.max_connections, config.smtp.max_connections_per_ip)
        kinds = {
            "smtp": smtp,
            # Submission has no limits of its own; it counts separately with SMTP's.
            "submission": smtp,
            "pop3": KindLimits(config.pop3.max_connections,
                               config.pop3.max_connections_per_ip),
            "imap": KindLimits(config.imap.max_connections,
                               config.imap.max_connections_per_ip),
        }
        return cls(limiter, kinds, config.server.hostname)

    def wrap(self, kind: str, factory: IProtocolFactory) -> IProtocolFactory:
        """Put the limits of ``kind`` in front of ``factory``.

        On an implicit-TLS listener the limit goes inside the TLS layer, so a refused
        client still reads a proper refusal instead of plaintext in a TLS stream.
        """
        if isinstance(factory, TLSMemoryBIOFactory):
            # TLSMemoryBIOFactory keeps no public handle on its TLS options, so the
            # limiter is slotted in between it and the protocol's factory.
            factory.wrappedFactory = LimitingFactory(
                factory.wrappedFactory, kind, self.limiter, self.kinds[kind], self.hostname)
            return factory
        return LimitingFactory(factory, kind, self.limiter, self.kinds[kind], self.hostname)


def chain(*wrappers: Callable[[str, IProtocolFactory], IProtocolFactory] | None,
          ) -> Callable[[str, IProtocolFactory], IProtocolFactory]:
    """Compose ``wrap_factory`` hooks; the first given ends up outermost."""
    active = [w for w in wrappers if w is not None]

    def wrap(kind: str, factory: IProtocolFactory) -> IProtocolFactory:
        for w in reversed(active):
            factory = w(kind, factory)
        return factory

    return wrap
