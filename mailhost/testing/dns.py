"""``TestDNSServer``: an authoritative DNS server on loopback serving zones from a dict.

For tests of SPF, DKIM, DMARC, MX routing and DANE: real UDP and TCP on 127.0.0.1,
an ephemeral port, answers built by ``twisted.names``' own server
(``DNSServerFactory``), so the client under test parses real DNS messages,
truncation and TCP retry included. Zones are a plain dict and may change while
the server runs::

    server = TestDNSServer({
        "example.test": {"MX": [(10, "mx.example.test")], "TXT": ["v=spf1 -all"]},
        "mx.example.test": {"A": ["127.0.0.1"]},
        "_25._tcp.mx.example.test": {"TLSA": [(3, 1, 1, bytes.fromhex("ab" * 32))]},
    })
    await server.start()           # server.address == ("127.0.0.1", port)
    ...
    await server.stop()

A name absent from ``zones`` is NXDOMAIN; a present name without the type is
NODATA. ``server.authenticated`` holds the names whose answers carry the AD bit
(the test stands in for a validating resolver); ``server.faults`` makes a name
``"timeout"`` (never answered) or ``"servfail"``. Every question is recorded in
``server.queries`` as ``(name, type)``.

``StaticLookup`` answers the same zones dict without a server or sockets, at once.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.names import dns, error
from twisted.names import server as names_server
from twisted.names.common import ResolverBase
from zope.interface import implementer

from mailhost.dns.interfaces import Answer, DNSNameInvalid, DNSTemporaryError, IDNSLookup
from mailhost.dns.stub import check_name

TLSA = 52
TYPES = {"A": dns.A, "AAAA": dns.AAAA, "MX": dns.MX, "TXT": dns.TXT, "PTR": dns.PTR,
         "CNAME": dns.CNAME, "TLSA": TLSA, "SOA": dns.SOA}
NAMES = {code: name for name, code in TYPES.items()}


def _txt_chunks(value: str | bytes) -> list[bytes]:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]


def _payload(rtype: str, value: Any, ttl: int) -> Any:
    if rtype == "A":
        return dns.Record_A(value, ttl=ttl)
    if rtype == "AAAA":
        return dns.Record_AAAA(str(ipaddress.IPv6Address(value)), ttl=ttl)
    if rtype == "MX":
        pref, host = value
        return dns.Record_MX(pref, host.encode("ascii"), ttl=ttl)
    if rtype == "TXT":
        return dns.Record_TXT(*_txt_chunks(value), ttl=ttl)
    if rtype == "PTR":
        return dns.Record_PTR(value.encode("ascii"), ttl=ttl)
    if rtype == "CNAME":
        return dns.Record_CNAME(value.encode("ascii"), ttl=ttl)
    if rtype == "TLSA":
        usage, selector, mtype, data = value
        return dns.UnknownRecord(bytes([usage, selector, mtype]) + bytes(data), ttl=ttl)
    raise ValueError(f"unsupported test record type {rtype}")


class _ZoneResolver(ResolverBase):
    """Answers from ``TestDNSServer.zones``; the server's one authority."""

    def __init__(self, owner: TestDNSServer) -> None:
        super().__init__()
        self.owner = owner

    def query(self, query: dns.Query, timeout: object = None) -> defer.Deferred:
        o = self.owner
        name = query.name.name.decode("ascii", "replace").rstrip(".").lower()
        rtype = NAMES.get(query.type, str(query.type))
        o.queries.append((name, rtype))
        fault = o.faults.get(name)
        if fault == "timeout":
            return defer.Deferred()  # never answered: the client's deadline decides
        if fault == "servfail":
            return defer.succeed(([], [], []))  # sendReply makes it SERVFAIL
        zone = o.zones.get(name)
        if zone is None:
            return defer.fail(error.DNSNameError(name))
        answers = []
        owner = name
        cname = zone.get("CNAME")
        if cname and rtype != "CNAME":
            target = cname[0] if isinstance(cname, list) else cname
            answers.append(dns.RRHeader(name, dns.CNAME, ttl=o.ttl, auth=True,
                                        payload=_payload("CNAME", target, o.ttl)))
            owner = target.rstrip(".").lower()
            zone = o.zones.get(owner, {})
        for value in zone.get(rtype, []):
            answers.append(dns.RRHeader(owner, TYPES[rtype], ttl=o.ttl, auth=True,
                                        payload=_payload(rtype, value, o.ttl)))
        authority = []
        if not answers:
            soa = dns.Record_SOA(mname=b"ns.test", rname=b"hostmaster.test", minimum=o.negative_ttl,
                                 ttl=o.negative_ttl)
            authority.append(dns.RRHeader(name, dns.SOA, ttl=o.negative_ttl, auth=True, payload=soa))
        return defer.succeed((answers, authority, []))


class _Factory(names_server.DNSServerFactory):
    """The server factory; sets AD on answers about ``owner.authenticated`` names."""

    def __init__(self, owner: TestDNSServer) -> None:
        super().__init__(authorities=[_ZoneResolver(owner)])
        self.owner = owner

    def sendReply(self, protocol: Any, message: Any, address: Any) -> None:
        if message.queries:
            name = message.queries[0].name.name.decode("ascii", "replace").rstrip(".").lower()
            message.authenticData = name in self.owner.authenticated
            if self.owner.faults.get(name) == "servfail":
                message.rCode = dns.ESERVER
        if address is not None:
            # Over UDP, cut at 512 octets with TC set, as real servers do for a
            # query without EDNS (Twisted's server would send any size).
            message.maxSize = 512
        super().sendReply(protocol, message, address)


class TestDNSServer:
    """An authoritative DNS server on 127.0.0.1 (UDP and TCP on one ephemeral port)."""

    __test__ = False  # not a pytest test class

    def __init__(self, zones: dict[str, dict[str, list[Any]]] | None = None, ttl: int = 300,
                 negative_ttl: int = 60, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.zones: dict[str, dict[str, list[Any]]] = {
            k.rstrip(".").lower(): v for k, v in (zones or {}).items()}
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.authenticated: set[str] = set()
        self.faults: dict[str, str] = {}
        self.queries: list[tuple[str, str]] = []
        self._ports: list[Any] = []
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    @property
    def nameserver(self) -> str:
        """``"127.0.0.1:PORT"``, as ``dns.nameservers`` takes it."""
        return f"{self.address[0]}:{self.address[1]}"

    async def start(self) -> tuple[str, int]:
        factory = _Factory(self)
        for _ in range(20):  # the UDP port may be taken for TCP by someone else
            udp = self.reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
            port = udp.getHost().port
            try:
                tcp = self.reactor.listenTCP(port, factory, interface="127.0.0.1")
            except CannotListenError:
                await defer.maybeDeferred(udp.stopListening)
                continue
            self._ports = [udp, tcp]
            self.address = ("127.0.0.1", port)
            return self.address
        raise CannotListenError("127.0.0.1", 0, "no port free for both UDP and TCP")

    async def stop(self) -> None:
        ports, self._ports = self._ports, []
        for p in ports:
            await defer.maybeDeferred(p.stopListening)


@implementer(IDNSLookup)
class StaticLookup:
    """IDNSLookup answered at once from a zones dict shaped like ``TestDNSServer``'s,
    without sockets: for unit and hypothesis tests that need thousands of lookups.

    Implements: IDNSLookup. ``faults`` as the server's (``"timeout"`` and
    ``"servfail"`` both fail with ``DNSTemporaryError``); ``queries`` records each."""

    def __init__(self, zones: dict[str, dict[str, list[Any]]] | None = None) -> None:
        self.zones = {k.rstrip(".").lower(): v for k, v in (zones or {}).items()}
        self.faults: dict[str, str] = {}
        self.authenticated: set[str] = set()
        self.queries: list[tuple[str, str]] = []

    def lookup(self, name: str, rtype: str) -> defer.Deferred[Answer]:
        try:
            name = check_name(name)
        except DNSNameInvalid:
            return defer.fail()
        self.queries.append((name, rtype))
        if name in self.faults:
            return defer.fail(DNSTemporaryError(f"{rtype} {name}: {self.faults[name]}"))
        zone = self.zones.get(name)
        if zone is None:
            return defer.succeed(Answer(name, rtype, (), exists=False, ttl=60))
        values = []
        for value in zone.get(rtype, []):
            if rtype == "TXT":
                value = value.encode() if isinstance(value, str) else bytes(value)
            elif rtype == "MX":
                value = (value[0], value[1].rstrip(".").lower())
            elif rtype == "TLSA":
                value = (value[0], value[1], value[2], bytes(value[3]))
            values.append(value)
        return defer.succeed(Answer(name, rtype, tuple(values), exists=True,
                                    authenticated=name in self.authenticated, ttl=300))
