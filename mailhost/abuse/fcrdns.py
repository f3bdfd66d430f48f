"""Forward-confirmed reverse DNS of the client, for ``Received:`` and ``require``.

As Postfix does before its greeting: the client's PTR names are looked up, and a
name counts only if it resolves (A for an IPv4 client, AAAA for IPv6) back to the
client's address (RFC 8601 §3 "iprev", recorded in Authentication-Results too). The confirmed name goes into ``Received:``
as ``from helo (name [ip])``, anything else as ``from helo (unknown [ip])``, so a
reader can trust the name in parentheses and never the HELO. The lookups start at
connect and are settled before MAIL FROM's checks, so no reply waits longer than the
DNS timeout (the lookups are bounded by it and run in parallel per name).

``smtp.fcrdns = "require"`` also refuses unconfirmed clients at RCPT, as Postfix's
``reject_unknown_client_hostname``: ``550 5.7.25`` when the DNS said no, ``450
4.7.25`` when it did not answer. Authenticated clients are never refused for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailhost.abuse.networks import client_address
from mailhost.dns.interfaces import DNSNameInvalid, DNSTemporaryError, IDNSLookup
from mailhost.message.checks import ClientContext, IEnvelopeCheck
from mailhost.message.stage import Verdict

log = Logger()

#: PTR names tried at most (a client with 50 PTR records gets the first few).
MAX_NAMES = 5


def reverse_name(ip: str) -> str:
    """The PTR owner name of an address: ``4.3.2.1.in-addr.arpa`` or the 32 nibbles
    of an IPv6 address under ``ip6.arpa``. ValueError for a non-address."""
    addr = client_address(ip)
    if addr is None:
        raise ValueError(f"not an IP address: {ip!r}")
    return addr.reverse_pointer


@dataclass(frozen=True)
class ReverseResult:
    """``pass`` (``name`` confirmed), ``fail`` (no PTR, or none resolves back),
    ``temperror`` (the DNS did not answer), as RFC 8601's iprev."""

    result: str
    name: str | None = None  # the confirmed name (pass), or the PTR name seen


@implementer(IEnvelopeCheck)
class FCrDNSCheck:
    """Implements: IEnvelopeCheck (``fcrdns``). Sets ``client.name``; results:
    ``client.results["fcrdns"]``, a ``ReverseResult``."""

    name = "fcrdns"

    def __init__(self, lookup: IDNSLookup, require: bool = False) -> None:
        self.lookup = lookup
        self.require = require

    def connect(self, client: ClientContext) -> None:
        if client_address(client.ip) is None:
            return
        client.name = "unknown"
        # (until the lookups are done, or if they never are: the DNS did not answer)
        client.results[self.name] = ReverseResult("temperror")
        client.message_results["iprev"] = ("temperror", client.ip, None)
        client.pending[self.name] = defer.Deferred.fromCoroutine(self._look(client))

    async def _look(self, client: ClientContext) -> None:
        result = await self.verify(client.ip)
        client.results[self.name] = result
        client.message_results["iprev"] = (result.result, client.ip,
                                           result.name if result.result == "pass" else None)
        if result.result == "pass":
            client.name = result.name
        elif result.result == "temperror":
            log.info("fcrdns {ip}: DNS did not answer; recorded as unknown", ip=client.ip,
                     event="fcrdns.temperror")

    async def verify(self, ip: str) -> ReverseResult:
        """The forward-confirmed name of ``ip``."""
        addr = client_address(ip)
        if addr is None:
            return ReverseResult("fail")
        try:
            ptr = await self.lookup.lookup(reverse_name(ip), "PTR")
        except DNSTemporaryError:
            return ReverseResult("temperror")
        except DNSNameInvalid:
            return ReverseResult("fail")
        names = [n for n in ptr.records if isinstance(n, str) and n][:MAX_NAMES]
        if not names:
            return ReverseResult("fail")
        rtype = "A" if addr.version == 4 else "AAAA"
        outcomes: list[tuple[bool, Any]] = await defer.DeferredList(
            [self.lookup.lookup(n, rtype) for n in names], consumeErrors=True)
        temporary = False
        for name, (ok, outcome) in zip(names, outcomes, strict=True):
            if not ok:  # a Failure: only a name that cannot be asked is no answer
                temporary = temporary or outcome.check(DNSNameInvalid) is None
                continue
            if any(client_address(a) == addr for a in outcome.records):
                return ReverseResult("pass", name)
        return ReverseResult("temperror" if temporary else "fail", names[0])

    def mail(self, client: ClientContext, sender: str) -> None:
        return None

    def rcpt(self, client: ClientContext, sender: str, recipient: str,
             accepted: int) -> Verdict | None:
        if not self.require or client.user is not None or client.submission:
            return None
        result = client.results.get(self.name)
        if result is None or result.result == "pass":
            return None
        text = f"Client host rejected: cannot find your hostname, [{client.ip}]"
        if result.result == "temperror":
            return Verdict.tempfail(text, code=450, status="4.7.25")
        return Verdict.reject(text, code=550, status="5.7.25")


__all__ = ["FCrDNSCheck", "ReverseResult", "reverse_name"]
