"""DNS blocklists and allowlists (RFC 5782), asked at connect, answered at RCPT.

Like Postfix's ``reject_rbl_client`` with ``smtpd_delay_reject``: the lookups start
when the client connects, and a listed client is refused at each RCPT with the
list's own TXT text (``554 5.7.1 Service unavailable; client [192.0.2.1] blocked
using zen.example; <TXT>``), so it never gets to send a body, and the reply says
which list to talk to. Zones are weighted like ``postscreen_dnsbl_sites``: each
listing adds the zone's weight, and the client is refused when the sum reaches the
threshold (one list alone at weight 1 and threshold 1, by default). Only the return
codes the operator names count (``127.0.0.2-127.0.0.11``): lists answer other codes
for "your resolver is blocked" or "query refused", and those must never list the
whole internet.

A DNSWL hit (any allowlist zone) exempts the client from DNSBLs and greylisting.
A lookup that times out or fails is a temporary error: that zone is skipped and the
fact logged, never a refusal. Authenticated clients, the submission listener and
the relay networks are not looked up.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailhost.abuse.networks import IPNetwork, client_address, in_networks
from mailhost.dns.interfaces import DNSNameInvalid, DNSTemporaryError, IDNSLookup
from mailhost.message.checks import ClientContext, IEnvelopeCheck
from mailhost.message.stage import Verdict

log = Logger()

#: Without codes, any 127/8 answer but Spamhaus's 127.255.255.0/24 error codes.
_DEFAULT_CODES = ((int(ipaddress.IPv4Address("127.0.0.0")),
                   int(ipaddress.IPv4Address("127.255.254.255"))),)
#: The most of a list's TXT text put into a reply.
MAX_TEXT = 200


class ZoneSpecError(ValueError):
    """A zone spec that cannot be parsed; the message says what is wrong."""


@dataclass(frozen=True)
class Zone:
    """One DNSBL or DNSWL zone: its name, the answers that count, its weight."""

    name: str
    #: Inclusive ranges of IPv4 answers (as integers) that count as a listing.
    codes: tuple[tuple[int, int], ...] = _DEFAULT_CODES
    weight: int = 1
    #: Postfix-style per-octet patterns (``127.0.[0..255].[1..3]``): for each of the
    #: four octets, the inclusive ranges it may be in.
    octets: tuple[tuple[tuple[tuple[int, int], ...], ...], ...] = ()

    @classmethod
    def parse(cls, spec: str) -> Zone:
        """``zone[=codes][*weight]``: codes are addresses, ``first-last`` ranges and
        Postfix's per-octet patterns (``127.0.[0..255].[1..3]``, ``127.0.0.[2;4]``),
        separated by ``,`` (``zen.example=127.0.0.2-127.0.0.11*2``)."""
        text = spec.strip()
        weight = 1
        if "*" in text:
            text, _, w = text.rpartition("*")
            try:
                weight = int(w.strip())
            except ValueError:
                raise ZoneSpecError(f"{spec!r}: weight {w!r} is not an integer") from None
        name, eq, codes_text = text.partition("=")
        name = name.strip().lower().rstrip(".")
        if not name or any(not label for label in name.split(".")) or " " in name:
            raise ZoneSpecError(f"{spec!r}: no zone name")
        if not eq:
            return cls(name, _DEFAULT_CODES, weight)
        codes = []
        octets = []
        for part in _split_codes(codes_text):
            if "[" in part:
                octets.append(_octet_pattern(spec, part))
                continue
            first, dash, last = part.partition("-")
            try:
                lo = int(ipaddress.IPv4Address(first.strip()))
                hi = int(ipaddress.IPv4Address(last.strip())) if dash else lo
            except ValueError:
                raise ZoneSpecError(f"{spec!r}: {part!r} is not an IPv4 address or range") \
                    from None
            if hi < lo:
                raise ZoneSpecError(f"{spec!r}: range {part!r} ends before it starts")
            codes.append((lo, hi))
        if not codes and not octets:
            raise ZoneSpecError(f"{spec!r}: no return codes after '='")
        return cls(name, tuple(codes), weight, tuple(octets))

    def counts(self, answer: str) -> bool:
        """Whether an A answer of this zone is one of its listing codes."""
        try:
            value = int(ipaddress.IPv4Address(answer))
        except ValueError:
            return False
        if any(lo <= value <= hi for lo, hi in self.codes):
            return True
        parts = [int(p) for p in answer.split(".")]
        return any(all(any(lo <= v <= hi for lo, hi in ranges)
                       for v, ranges in zip(parts, pattern, strict=True))
                   for pattern in self.octets)


def _split_codes(text: str) -> list[str]:
    """Codes separated by ``,`` (or ``;`` outside brackets, where Postfix uses it to
    list octet values)."""
    out, depth, current = [], 0, ""
    for c in text:
        depth += c == "["
        depth -= c == "]"
        if c == "," or (c == ";" and depth == 0):
            out.append(current)
            current = ""
        else:
            current += c
    out.append(current)
    return [p.strip() for p in out if p.strip()]


def _octet_pattern(spec: str, part: str) -> tuple[tuple[tuple[int, int], ...], ...]:
    """``127.0.[0..255].[1;2;3]`` → for each octet, its inclusive ranges."""
    octets = re.findall(r"\[[^\]]*\]|[^.\[\]]+", part)
    bad = ZoneSpecError(f"{spec!r}: {part!r} is not an address pattern")
    if len(octets) != 4 or ".".join(octets) != part:
        raise bad
    out = []
    for octet in octets:
        body = octet[1:-1] if octet.startswith("[") and octet.endswith("]") else octet
        ranges = []
        for item in body.split(";"):
            lo_text, dots, hi_text = item.partition("..")
            if not lo_text.strip().isdigit() or (dots and not hi_text.strip().isdigit()):
                raise bad
            lo = int(lo_text)
            hi = int(hi_text) if dots else lo
            if not 0 <= lo <= hi <= 255:
                raise bad
            ranges.append((lo, hi))
        out.append(tuple(ranges))
    return tuple(out)


def query_name(ip: str, zone: str) -> str:
    """The name to ask ``zone`` about ``ip`` (RFC 5782 §2.1, §2.4): the IPv4 octets
    reversed, or the 32 nibbles of the IPv6 address reversed, then the zone.
    ValueError for something that is not an address."""
    addr = client_address(ip)
    if addr is None:
        raise ValueError(f"not an IP address: {ip!r}")
    if addr.version == 4:
        labels = reversed(str(addr).split("."))
    else:
        labels = reversed(addr.exploded.replace(":", ""))
    return ".".join(labels) + "." + zone.strip().rstrip(".").lower()


def _clean_text(text: bytes | str) -> str:
    """A list's TXT text made fit for a reply line: printable ASCII, bounded."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = "".join(c if " " <= c <= "~" else " " for c in text)
    return " ".join(text.split())[:MAX_TEXT]


@dataclass
class Listing:
    """What the lists said about one client."""

    allowlisted_by: str | None = None
    #: (zone, weight) of every blocklist that listed the client.
    listed_by: list[tuple[str, int]] = field(default_factory=list)
    score: int = 0
    text: str = ""  # the TXT of the heaviest listing zone
    temperrors: list[str] = field(default_factory=list)


@implementer(IEnvelopeCheck)
class DNSBLCheck:
    """Implements: IEnvelopeCheck (``dnsbl``). Results: ``client.results["dnsbl"]``,
    a ``Listing``; a DNSWL hit sets ``client.allowlisted``."""

    name = "dnsbl"

    def __init__(self, lookup: IDNSLookup, blocklists: Sequence[Zone] = (),
                 allowlists: Sequence[Zone] = (), threshold: int = 1,
                 exempt: Iterable[IPNetwork] = ()) -> None:
        self.lookup = lookup
        self.blocklists = tuple(blocklists)
        self.allowlists = tuple(allowlists)
        self.threshold = threshold
        self.exempt = tuple(exempt)

    def connect(self, client: ClientContext) -> None:
        if client.submission or client.user is not None or in_networks(client.ip, self.exempt):
            return
        if client_address(client.ip) is None or not (self.blocklists or self.allowlists):
            return
        client.pending[self.name] = defer.Deferred.fromCoroutine(self._look(client))

    async def _ask(self, ip: str, zone: Zone, listing: Listing) -> bool:
        """Whether ``zone`` lists ``ip`` with one of its codes; a failure is logged
        and counts as not listed."""
        try:
            answer = await self.lookup.lookup(query_name(ip, zone.name), "A")
        except (DNSTemporaryError, DNSNameInvalid) as e:
            listing.temperrors.append(zone.name)
            log.warn("dnsbl {zone}: no answer for {ip} ({error}); skipped",
                     zone=zone.name, ip=ip, error=str(e), event="dnsbl.temperror")
            return False
        return any(zone.counts(a) for a in answer.records)

    async def _text(self, ip: str, zone: Zone) -> str:
        try:
            answer = await self.lookup.lookup(query_name(ip, zone.name), "TXT")
        except (DNSTemporaryError, DNSNameInvalid):
            return ""
        return _clean_text(b" ".join(answer.records)) if answer.records else ""

    async def _look(self, client: ClientContext) -> None:
        listing = Listing()
        client.results[self.name] = listing
        ip = client.ip
        # Allow- and blocklists at once: the answer is as late as the slowest list,
        # not the sum of two rounds.
        zones = self.allowlists + self.blocklists
        hits: list[Any] = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(self._ask(ip, z, listing)) for z in zones])
        allow_hits, hits = hits[:len(self.allowlists)], hits[len(self.allowlists):]
        for zone, hit in zip(self.allowlists, allow_hits, strict=True):
            if hit:
                listing.allowlisted_by = zone.name
                client.allowlisted = True
                log.info("dnswl {zone} lists {ip}: exempt from DNSBLs and greylisting",
                         zone=zone.name, ip=ip, event="dnswl.listed")
                return
        listing.listed_by = [(z.name, z.weight) for z, hit in zip(self.blocklists, hits,
                                                                  strict=True) if hit]
        listing.score = sum(w for _, w in listing.listed_by)
        if listing.listed_by and listing.score >= self.threshold:
            heaviest = max(listing.listed_by, key=lambda zw: zw[1])[0]
            listing.text = await self._text(ip, next(z for z in self.blocklists
                                                     if z.name == heaviest))
            log.info("dnsbl: {ip} listed by {zones} (score {score}); refused at RCPT",
                     ip=ip, zones=[z for z, _ in listing.listed_by], score=listing.score,
                     event="dnsbl.listed")

    def mail(self, client: ClientContext, sender: str) -> None:
        return None

    def rcpt(self, client: ClientContext, sender: str, recipient: str,
             accepted: int) -> Verdict | None:
        listing = client.results.get(self.name)
        if (listing is None or client.user is not None or client.allowlisted
                or not listing.listed_by or listing.score < self.threshold):
            return None
        zone = max(listing.listed_by, key=lambda zw: zw[1])[0]
        text = f"Service unavailable; client [{client.ip}] blocked using {zone}"
        if listing.text:
            text += f"; {listing.text}"
        return Verdict.reject(text, code=554, status="5.7.1")


__all__ = ["DNSBLCheck", "Listing", "Zone", "ZoneSpecError", "query_name"]
