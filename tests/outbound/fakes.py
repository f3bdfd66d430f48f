"""Test doubles for the outbound queue: an in-memory IResolver."""

from __future__ import annotations

from twisted.internet import defer
from twisted.names import dns, error


class FakeResolver:
    """Answers MX/A/AAAA from dicts; a value that is an exception class fails the lookup.

    ``mx``: domain -> [(preference, host)] (host "" is the null MX);
    ``a``: name -> [IPv4]; ``aaaa``: name -> [IPv6]. Unknown names are NXDOMAIN
    unless listed in ``exists`` (then they answer NODATA).
    """

    def __init__(self, mx=None, a=None, aaaa=None, exists=(), ttl: int = 60) -> None:
        self.mx = mx or {}
        self.a = a or {}
        self.aaaa = aaaa or {}
        self.exists = set(exists)
        self.ttl = ttl
        self.queries: list[tuple[str, str]] = []

    def _known(self, name: str) -> bool:
        return name in self.mx or name in self.a or name in self.aaaa or name in self.exists

    def _answer(self, table, name, make, qtype):
        self.queries.append((qtype, name))
        value = table.get(name)
        if isinstance(value, type) and issubclass(value, Exception):
            return defer.fail(value(name))
        if value is None:
            if not self._known(name):
                return defer.fail(error.DNSNameError(name))
            return defer.succeed(([], [], []))
        return defer.succeed(([make(name, v) for v in value], [], []))

    def lookupMailExchange(self, name, timeout=None):
        def make(owner, v):
            pref, host = v
            return dns.RRHeader(owner, dns.MX, payload=dns.Record_MX(pref, host, ttl=self.ttl))

        return self._answer(self.mx, name, make, "MX")

    def lookupAddress(self, name, timeout=None):
        def make(owner, v):
            return dns.RRHeader(owner, dns.A, payload=dns.Record_A(v, ttl=self.ttl))

        return self._answer(self.a, name, make, "A")

    def lookupIPV6Address(self, name, timeout=None):
        def make(owner, v):
            return dns.RRHeader(owner, dns.AAAA, payload=dns.Record_AAAA(v, ttl=self.ttl))

        return self._answer(self.aaaa, name, make, "AAAA")
