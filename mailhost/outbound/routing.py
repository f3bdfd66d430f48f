"""Where mail for a domain goes: MX lookup (RFC 5321 §5.1, RFC 7505) or a smarthost.

``Router.route(domain)`` answers with a ``Route``: hosts in the order to try them
within one delivery attempt, each with its addresses. DNS failures are sorted into
temporary (SERVFAIL, timeout: retry later) and permanent (NXDOMAIN, null MX,
no address at all: bounce) so the scheduler never confuses the two.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import random
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.names import dns, error
from twisted.names.client import Resolver as NamesResolver
from zope.interface import implementer

from mailhost.dns.interfaces import Answer, DNSNameInvalid, DNSTemporaryError, IDNSLookup


class RoutingError(Exception):
    """No usable route; ``status`` is the enhanced status code for the DSN."""

    temporary = True

    def __init__(self, status: str, text: str) -> None:
        super().__init__(f"{status} {text}")
        self.status = status
        self.text = text


class TemporaryRoutingError(RoutingError):
    temporary = True


class PermanentRoutingError(RoutingError):
    temporary = False


@dataclass
class Hop:
    """One host to try, with its addresses (IPv4 first)."""

    name: str
    port: int
    addresses: list[str] = field(default_factory=list)
    preference: int = 0
    # Its addresses came with the AD bit (DANE needs them and the MX answer so).
    secure: bool = False


@dataclass
class Route:
    domain: str
    hops: list[Hop]
    smarthost: bool = False
    # The MX answer (or, with no MX, the domain's addresses) came with the AD bit.
    mx_secure: bool = False


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def split_hostport(value: str, default_port: int = 25) -> tuple[str, int]:
    """'host:port', '[v6]:port' or 'host' → (host, port)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":")
        return host, int(port) if port else default_port
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, int(port)
    return value, default_port


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


def order_mx(
    records: Iterable[tuple[int, str]], rng: random.Random | None = None
) -> list[tuple[int, str]]:
    """Sort by preference; shuffle hosts of equal preference (RFC 5321 §5.1)."""
    shuffle = (rng or random).shuffle
    by_pref: dict[int, list[str]] = {}
    for pref, name in records:
        by_pref.setdefault(pref, []).append(name)
    out: list[tuple[int, str]] = []
    for pref in sorted(by_pref):
        names = by_pref[pref]
        shuffle(names)
        out.extend((pref, n) for n in names)
    return out


class Router:
    """Resolves domains to routes with an injected ``IDNSLookup`` (or an ``IResolver``,
    asked through ``ResolverLookup``)."""

    def __init__(
        self,
        resolver: object | None,
        port: int = 25,
        smarthost: str = "",
        max_hosts: int = 10,
        rng: random.Random | None = None,
        resolver_name: str = "",
    ) -> None:
        self.resolver = resolver
        self.lookup: IDNSLookup = (resolver if IDNSLookup.providedBy(resolver)
                                   else ResolverLookup(resolver))
        # Named in lookup failures ("… (resolver 127.0.0.1:53)"): the DNS errors
        # themselves do not say which server failed.
        self.resolver_name = resolver_name
        self.port = port
        self.smarthost = smarthost
        self.max_hosts = max_hosts
        self.rng = rng or random.Random()

    async def route(self, domain: str) -> Route:
        domain = _norm(domain)
        if self.smarthost:
            host, port = split_hostport(self.smarthost, 25)
            return Route(domain, [Hop(host, port, [host] if is_ip(host) else [])], smarthost=True)
        if domain.startswith("[") and domain.endswith("]"):
            literal = domain[1:-1]
            if literal.lower().startswith("ipv6:"):
                literal = literal[5:]
            if not is_ip(literal):
                raise PermanentRoutingError("5.1.2", f"bad address literal {domain}")
            return Route(domain, [Hop(literal, self.port, [literal])])
        mx, mx_secure = await self._lookup_mx(domain)
        if mx is None:
            # No MX: the domain itself is the implicit MX, preference 0 (RFC 5321 §5.1).
            addresses, temp, secure = await self._addresses(domain)
            if not addresses:
                if temp:
                    raise TemporaryRoutingError(
                        "4.4.3", f"cannot resolve {domain}: {temp}{self._which()}")
                raise PermanentRoutingError("5.1.2", f"no MX or address records for {domain}")
            return Route(domain, [Hop(domain, self.port, addresses, secure=secure)],
                         mx_secure=mx_secure and secure)
        hops = []
        errors = []
        for pref, name in mx[: self.max_hosts]:
            if is_ip(name):
                hops.append(Hop(name, self.port, [name], pref))
                continue
            addresses, temp, secure = await self._addresses(name)
            if addresses:
                hops.append(Hop(name, self.port, addresses, pref, secure=secure))
            else:
                errors.append(f"{name}: {temp or 'no address'}")
        if not hops:
            # RFC 5321 leaves this open; like Postfix we retry (the MX may be fixed).
            raise TemporaryRoutingError(
                "4.4.3", f"no usable MX host for {domain} ({'; '.join(errors)}){self._which()}"
            )
        return Route(domain, hops, mx_secure=mx_secure)

    def _which(self) -> str:
        return f" (resolver {self.resolver_name})" if self.resolver_name else ""

    async def _lookup_mx(self, domain: str) -> tuple[list[tuple[int, str]] | None, bool]:
        """Ordered MX hosts, or None when the domain has no MX records, and whether
        the answer came with the AD bit (for DANE)."""
        try:
            answer = await self.lookup.lookup(domain, "MX")
        except DNSNameInvalid:
            raise PermanentRoutingError("5.1.2", f"bad domain name {domain}") from None
        except Exception as e:
            raise TemporaryRoutingError(
                "4.4.3", f"MX lookup for {domain} failed: {describe_error(e)}{self._which()}"
            ) from None
        if not answer.exists:
            raise PermanentRoutingError("5.1.2", f"domain {domain} does not exist")
        records = [(int(pref), _norm(name)) for pref, name in answer.records]
        if not records:
            return None, answer.authenticated
        if any(name == "" for _, name in records):
            if len(records) == 1:
                raise PermanentRoutingError(
                    "5.1.10", f"domain {domain} does not accept mail (null MX)"
                )
            records = [r for r in records if r[1] != ""]
        return order_mx(records, self.rng), answer.authenticated

    async def _addresses(self, name: str) -> tuple[list[str], str, bool]:
        """A then AAAA addresses of ``name``, a temporary error text if any, and
        whether every answer came with the AD bit."""
        out: list[str] = []
        temp = ""
        secure = True
        for rtype in ("A", "AAAA"):
            try:
                answer = await self.lookup.lookup(name, rtype)
            except DNSNameInvalid:
                secure = False
                continue
            except Exception as e:
                temp = temp or describe_error(e)
                secure = False
                continue
            secure = secure and answer.authenticated
            out.extend(str(a) for a in answer.records)
        return out, ("" if out else temp), secure and bool(out)


@implementer(IDNSLookup)
class ResolverLookup:
    """Implements: IDNSLookup over a ``twisted.names`` IResolver, for MX, A and AAAA.

    What ``outbound.resolver = "host:port"`` (deprecated) and tests that hand in an
    IResolver route through. Its answers never carry the AD bit (the IResolver
    methods drop the reply header), so DANE never applies through it."""

    METHODS = {"MX": "lookupMailExchange", "A": "lookupAddress", "AAAA": "lookupIPV6Address"}

    def __init__(self, resolver: Any) -> None:
        self.resolver = resolver

    def lookup(self, name: str, rtype: str) -> defer.Deferred[Answer]:
        return defer.Deferred.fromCoroutine(self._lookup(name, rtype))

    async def _lookup(self, name: str, rtype: str) -> Answer:
        method = self.METHODS.get(rtype)
        if method is None:
            raise ValueError(f"unsupported record type {rtype}")
        try:
            answers, _auth, _add = await getattr(self.resolver, method)(name)
        except error.DNSNameError:
            return Answer(name, rtype, (), exists=False)
        except Exception as e:
            raise DNSTemporaryError(describe_error(e)) from None
        values: list[Any] = []
        for rr in answers:
            if rtype == "MX" and rr.type == dns.MX:
                values.append((rr.payload.preference,
                               _norm(rr.payload.name.name.decode("ascii", "replace"))))
            elif rtype == "A" and rr.type == dns.A:
                values.append(rr.payload.dottedQuad())
            elif rtype == "AAAA" and rr.type == dns.AAAA:
                values.append(_ipv6(rr.payload))
        return Answer(name, rtype, tuple(values), exists=True, ttl=0.0)


def _ipv6(payload: dns.Record_AAAA) -> str:
    return socket.inet_ntop(socket.AF_INET6, payload.address)


def describe_error(e: BaseException) -> str:
    """A lookup or connection failure as an admin needs it in a log line or a DSN:
    the DNS rcode by name, an OS error's text and errno name (``Invalid argument
    (EINVAL)``), otherwise the exception's own text; its class name only when it has
    no text (a bare ``OSError`` told nothing)."""
    names = {
        error.DNSServerError: "SERVFAIL",
        error.DNSQueryRefusedError: "REFUSED",
        error.DNSQueryTimeoutError: "timeout",
        defer.TimeoutError: "timeout",
        error.DNSFormatError: "FORMERR",
        error.DNSNotImplementedError: "NOTIMP",
    }
    for cls, label in names.items():
        if isinstance(e, cls):
            return label
    if isinstance(e, OSError) and e.errno is not None:
        text = e.strerror or os.strerror(e.errno)
        return f"{text} ({errno.errorcode.get(e.errno, e.errno)})"
    return " ".join(str(e).split()) or type(e).__name__


def resolver_name(spec: str) -> str:
    """``outbound.resolver`` as named in error messages."""
    return "from /etc/resolv.conf" if spec == "system" else spec


def make_resolver(spec: str, reactor: object | None = None) -> object:
    """The deprecated ``outbound.resolver = "host:port"`` → IResolver (``"system"``
    routes through the ``[dns]`` lookup instead, see OutboundService.startService)."""
    host, port = split_hostport(spec, 53)
    return NamesResolver(servers=[(host, port)], reactor=reactor)
