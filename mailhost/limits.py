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

Under pressure, idle sessions make room (``limits.evict_idle``). Slow clients that
connect and then say nothing, or trickle a byte now and then, could otherwise hold
every slot of a listener, and each protocol's own deadlines only free a slot after
minutes. So when a listener kind is full, a newcomer is admitted by closing the
session that has been idle longest among those with nothing worth keeping: an SMTP
session that has not started a mail transaction, a POP3 or IMAP session that has not
logged in, with no command running. The protocol says when its session is such and
says its own goodbye (``IEvictable``); this module never reads protocol bytes. It is
Postfix's stress-adaptive behaviour in the form that needs no guess of a timeout: a
session is cut only when someone else needs its slot.

Wiring, in ``mailhost.service.makeService``::

    limits = ConnectionLimits.from_settings(settings.limits, reactor=reactor)
    root.wrap_factory = limits.wrap   # (kind, factory) -> factory
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import Interface

from mailhost.config import ConfigError
from mailhost.netkey import client_key
from mailhost.settings import KindLimitSettings, LimitsSettings
from mailhost.wrapping import InterfaceCopyingWrapper

log = Logger()

KINDS = ("smtp", "submission", "pop3", "imap")

# Seconds a refused client gets to read the refusal (and finish a TLS handshake on an
# implicit-TLS port) before the connection is aborted.
REFUSAL_TIMEOUT = 10.0
# Seconds between two log lines about the same client being refused.
LOG_INTERVAL = 60.0


#: What each refusal reason says; every one names the limit that was hit.
_REASONS = {
    "max_connections": "Too many connections to this server; try again later",
    "max_connections_per_ip": "Too many connections from {ip}",
    "connection_rate": "Too many new connections from {ip}; slow down",
    "evicted": "Too many connections; closing an idle session",
}


def refusal(kind: str, hostname: str, ip: str, reason: str = "max_connections_per_ip",
            ) -> bytes:
    """The protocol's own "too many connections" line for listener ``kind``, naming
    the limit (``reason``: max_connections, max_connections_per_ip, connection_rate,
    or evicted for an idle session closed to make room)."""
    text = _REASONS[reason].format(ip=ip)
    if kind in ("smtp", "submission"):
        return f"421 4.7.0 {hostname} Error: {text[0].lower()}{text[1:]}\r\n".encode()
    if kind == "pop3":
        return f"-ERR [SYS/TEMP] {text}\r\n".encode()
    if kind == "imap":
        return f"* BYE [UNAVAILABLE] {text}\r\n".encode()
    raise ValueError(f"unknown listener kind {kind!r}")


class IEvictable(Interface):
    """A session that may be closed to make room for a new client (see module doc).

    Implemented by the SMTP, POP3 and IMAP server protocols.
    """

    def idle_since() -> float | None:
        """Reactor time since when the session has been idle with nothing worth
        keeping (SMTP: no mail transaction started yet; POP3, IMAP: not logged in; no
        command running), or None while it must not be evicted."""

    def evict(line: bytes) -> None:
        """Write ``line`` (this protocol's over-capacity goodbye) and close."""


def _evictable(proto: Any) -> Any:
    """The IEvictable inside ``proto``, looking through listener wrappers (metrics,
    fault injection); None if there is none."""
    for _ in range(8):
        if IEvictable.providedBy(proto):
            return proto
        if not isinstance(proto, ProtocolWrapper):
            return None
        proto = proto.wrappedProtocol
    return None


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
                 clock: IReactorTime | None = None, max_tracked: int = 100000,
                 evict_idle: bool = True) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.clock: IReactorTime = clock
        self.rate = rate / 60.0
        self.burst = max(1, burst)
        self.exempt = [ipaddress.ip_network(n, strict=False) for n in exempt]
        self.max_tracked = max_tracked
        self.total: dict[str, int] = {}
        self.per_client: dict[tuple[str, str], int] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._logged: dict[str, float] = {}
        self._exempt_cache: dict[str, bool] = {}
        self.evict_idle = evict_idle
        # The admitted sessions of each kind (for eviction), in arrival order.
        self.sessions: dict[str, dict[_CountedProtocol, None]] = {}
        self.evicted = 0

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
        """Count a new connection; return None if admitted, else why it is refused.

        At the overall limit, the idlest evictable session of ``kind`` is closed to
        make room, once the newcomer has passed its per-address checks.
        """
        exempt = self.is_exempt(host)
        key = client_key(host)
        if (not exempt and limits.max_per_ip
                and self.per_client.get((kind, key), 0) >= limits.max_per_ip):
            return "max_connections_per_ip"
        victim = None
        if limits.max_connections and self.total.get(kind, 0) >= limits.max_connections:
            victim = self._victim(kind) if self.evict_idle else None
            if victim is None:
                return "max_connections"
        if not exempt and self.rate > 0 and not self._take_token(key):
            return "connection_rate"
        if victim is not None:
            self._evict(kind, victim)
        total = self.total.get(kind, 0)
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

    def _victim(self, kind: str) -> _CountedProtocol | None:
        """The session of ``kind`` idle longest among the evictable ones."""
        best, best_since = None, None
        for counted in self.sessions.get(kind, ()):
            if counted.evictable is None or counted.released:
                continue
            since = counted.evictable.idle_since()
            if since is not None and (best_since is None or since < best_since):
                best, best_since = counted, since
        return best

    def _evict(self, kind: str, counted: _CountedProtocol) -> None:
        """Free the victim's slot now and have its protocol say goodbye."""
        self.evicted += 1
        counted.released = True
        self.release(kind, counted.host)
        self.sessions.get(kind, {}).pop(counted, None)
        if self.should_log("evict:" + kind):
            log.warn("idle session closed to make room kind={kind} client={client}",
                     event="connection_evicted", kind=kind, client=counted.host)
        counted.evictable.evict(refusal(kind, counted.factory.hostname, counted.host,
                                        "evicted"))

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
        transport: Any = self.transport  # a TCP transport: ITCPTransport
        self._abort = self.clock.callLater(REFUSAL_TIMEOUT, transport.abortConnection)
        transport.write(self.line)
        transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """Whatever the client says is ignored: no command runs on a refused connection."""

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self._abort = None


class _CountedProtocol(InterfaceCopyingWrapper):
    """An admitted connection; releases its count when it ends (or is evicted)."""

    def __init__(self, factory: LimitingFactory, wrapped: Any, host: str) -> None:
        super().__init__(factory, wrapped)  # type: ignore[arg-type]  # stubs: WrappingFactory[T]
        self.host = host
        self.released = False
        self.evictable = _evictable(wrapped)
        factory.limiter.sessions.setdefault(factory.kind, {})[self] = None

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        limiter = self.factory.limiter
        limiter.sessions.get(self.factory.kind, {}).pop(self, None)
        if not self.released:
            self.released = True
            limiter.release(self.factory.kind, self.host)
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

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 (a wrapper, or a _Refuser)
        host = getattr(addr, "host", None) or "unix"
        reason = self.limiter.admit(self.kind, host, self.limits)
        if reason is not None:
            self.refused += 1
            if self.limiter.should_log(client_key(host)):
                log.warn("connection refused kind={kind} client={client} reason={reason}",
                         event="connection_refused", kind=self.kind, client=host,
                         reason=reason)
            return _Refuser(refusal(self.kind, self.hostname, host, reason),
                            self.limiter.clock)
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
    """Per-kind limits from settings over one shared ``ConnectionLimiter``.

    ``wrap`` is the ``wrap_factory(kind, factory)`` hook of ``makeService``.
    """

    def __init__(self, limiter: ConnectionLimiter, kinds: dict[str, KindLimits],
                 hostname: str) -> None:
        self.limiter = limiter
        self.kinds = kinds
        self.hostname = hostname

    @classmethod
    def from_settings(cls, settings: LimitsSettings, reactor: IReactorTime | None = None,
                      ) -> ConnectionLimits:
        try:
            limiter = ConnectionLimiter(settings.connection_rate, settings.connection_burst,
                                        list(settings.exempt_networks), clock=reactor,
                                        evict_idle=settings.evict_idle)
        except ValueError as e:
            raise ConfigError(f"limits.exempt_networks: {e}") from None

        def kind(caps: KindLimitSettings) -> KindLimits:
            return KindLimits(caps.max_connections, caps.max_connections_per_ip)

        smtp = kind(settings.smtp)
        kinds = {
            "smtp": smtp,
            # Submission has no limits of its own; it counts separately with SMTP's.
            "submission": smtp,
            "pop3": kind(settings.pop3),
            "imap": kind(settings.imap),
        }
        return cls(limiter, kinds, settings.hostname)

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
