"""The DNS seam of mail authentication: one lookup, one answer shape, two errors.

SPF, DKIM, DMARC, DANE and (later) DNSBL ask ``IDNSLookup.lookup(name, rtype)`` and
get an ``Answer``: the records of one type at one name, already decoded, the TTL
they may be kept for, and whether the resolver vouched for them (the AD bit, RFC
4035 §3.2.3; trusted from the configured resolver as Postfix does, never checked
here). Two outcomes are not errors but answers, because the RFCs give them
meanings of their own: the name does not exist (NXDOMAIN, ``exists`` false) and the
name exists without records of that type (NODATA, ``records`` empty). Everything
else that keeps an answer from us (timeout, SERVFAIL, REFUSED, a garbled reply) is
``DNSTemporaryError``: SPF and DKIM turn it into ``temperror``. A name that cannot
be asked at all (empty label, over 255 octets) is ``DNSNameInvalid``.

Records by type (``records`` is a tuple of):

- ``TXT``: ``bytes``, the character-strings of one record joined (RFC 7208 §3.3,
  RFC 6376 §3.6.2.2);
- ``MX``: ``(preference, exchange)`` with the exchange lower-case without the
  final dot (``""`` for a null MX);
- ``A``/``AAAA``: the address as text;
- ``PTR``/``CNAME``: the target name, lower-case, no final dot;
- ``TLSA``: ``(usage, selector, matching_type, association_data_bytes)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Interface

RTYPES = ("A", "AAAA", "MX", "TXT", "PTR", "CNAME", "TLSA")


class DNSTemporaryError(Exception):
    """No answer now (timeout, SERVFAIL, REFUSED, unparsable reply): try again later."""


class DNSNameInvalid(ValueError):
    """The name cannot be put in a DNS query (empty or over-long label or name)."""


@dataclass(frozen=True)
class Answer:
    """The records of one type at one name, as the resolver gave them."""

    name: str
    rtype: str
    records: tuple[Any, ...] = ()
    # False: NXDOMAIN. True with no records: NODATA.
    exists: bool = True
    # The AD bit of the response that carried this answer.
    authenticated: bool = False
    # Seconds the answer may be reused (the smallest TTL of its records, or the
    # negative-caching TTL of RFC 2308 for NXDOMAIN and NODATA).
    ttl: float = 0.0

    @property
    def void(self) -> bool:
        """NXDOMAIN or NODATA: a "void lookup" in RFC 7208 §4.6.4's sense."""
        return not self.records


class IDNSLookup(Interface):
    """Asks DNS questions without blocking the reactor.

    Implementations bound every lookup in time (a lookup never waits longer than
    the configured timeout) and may cache answers for their TTL.
    """

    def lookup(name: str, rtype: str) -> Deferred[Answer]:
        """Records of ``rtype`` (one of ``RTYPES``) at ``name``.

        Fires with an ``Answer`` (also for NXDOMAIN and NODATA), or fails with
        ``DNSTemporaryError`` or ``DNSNameInvalid``."""
