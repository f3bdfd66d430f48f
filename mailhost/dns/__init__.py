"""DNS for mail authentication: ``IDNSLookup`` answers with TTL cache and AD bit.

``make_lookup(settings)`` builds what ``service.py`` hands to SPF, DKIM, DMARC and
DANE: a ``CachingLookup`` over a ``StubLookup`` that asks the configured resolvers.
Tests hand in the same interface pointed at ``mailhost.testing.dns.TestDNSServer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailhost.dns.cache import CachingLookup
from mailhost.dns.interfaces import RTYPES, Answer, DNSNameInvalid, DNSTemporaryError, IDNSLookup
from mailhost.dns.stub import StubLookup, parse_server

__all__ = ["RTYPES", "Answer", "CachingLookup", "DNSNameInvalid", "DNSSettings",
           "DNSTemporaryError", "IDNSLookup", "StubLookup", "make_lookup"]


@dataclass(frozen=True)
class DNSSettings:
    """What the DNS layer reads: ``[dns]``."""

    nameservers: tuple[str, ...] = ()
    timeout: float = 5.0
    cache_entries: int = 10000

    @classmethod
    def from_config(cls, config: Any) -> DNSSettings:
        # Any, not mailhost.config.Config: the DNS layer imports nothing else of mailhost.
        d = config.dns
        return cls(tuple(d.nameservers), d.timeout, d.cache_entries)


def make_lookup(settings: DNSSettings, reactor: Any = None) -> CachingLookup:
    """The cached lookup for ``settings``; opens no socket until the first lookup."""
    servers = [parse_server(s) for s in settings.nameservers] or None
    stub = StubLookup(servers, timeout=settings.timeout, reactor=reactor)
    return CachingLookup(stub, clock=reactor, max_entries=settings.cache_entries)
