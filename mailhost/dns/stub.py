"""``StubLookup``: IDNSLookup over the network, asking configured recursive resolvers.

Why not ``twisted.names.client.Resolver``: its queries never set the AD bit, and
RFC 6840 §5.7 lets a validating resolver (Unbound, BIND) set AD in a reply only when
the query asked for it, so DANE would never see an authenticated TLSA answer. The
client's ``lookupX`` methods also drop the reply's header, where AD lives. So this
module sends its own queries through Twisted's public DNS protocols
(``DNSDatagramProtocol``, ``DNSProtocol``), whose ``writeMessage`` we extend to set
AD, and reads AD, the rcode, the TTLs and the SOA (for negative caching) from the
reply. A truncated UDP reply is asked again over TCP (DKIM RSA keys do not fit in
512 octets). Each lookup has one deadline across servers and the TCP retry.

Nothing happens at construction: a ``StubLookup`` opens a socket only while a
lookup is in flight, so a host that never looks anything up never starts a resolver.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet import error as ierror
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.names import dns
from zope.interface import implementer

from mailhost.dns.interfaces import Answer, DNSNameInvalid, DNSTemporaryError, IDNSLookup

log = Logger()

TYPE_CODES = {"A": dns.A, "AAAA": dns.AAAA, "MX": dns.MX, "TXT": dns.TXT, "PTR": dns.PTR,
              "CNAME": dns.CNAME, "TLSA": 52}
# RFC 2308 §5: cache NXDOMAIN/NODATA for the SOA's minimum; without SOA, this long.
DEFAULT_NEGATIVE_TTL = 60.0


def check_name(name: str) -> str:
    """The name as asked (lower-case, no final dot); DNSNameInvalid if it cannot be."""
    name = name.strip().rstrip(".").lower()
    try:
        encoded = name.encode("idna") if not name.isascii() else name.encode("ascii")
    except UnicodeError as e:
        raise DNSNameInvalid(f"bad name {name!r}") from e
    labels = encoded.split(b".")
    if not name or len(encoded) > 253 or any(not label or len(label) > 63 for label in labels):
        raise DNSNameInvalid(f"bad name {name!r}")
    return encoded.decode("ascii")


def resolv_conf_servers(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """``nameserver`` lines of resolv.conf, or 127.0.0.1 when there are none (as libc)."""
    servers = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        ipaddress.ip_address(parts[1].split("%")[0])
                    except ValueError:
                        continue
                    servers.append((parts[1], 53))
    except OSError:
        pass
    return servers or [("127.0.0.1", 53)]


def parse_server(spec: str) -> tuple[str, int]:
    """``"192.0.2.1"``, ``"192.0.2.1:5353"``, ``"[2001:db8::1]:53"`` → (host, port)."""
    spec = spec.strip()
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        return host, int(rest.lstrip(":") or 53)
    if spec.count(":") == 1:
        host, _, port = spec.partition(":")
        return host, int(port)
    return spec, 53


class _ADDatagram(dns.DNSDatagramProtocol):
    """UDP DNS client protocol whose queries ask for the AD bit (RFC 6840 §5.7)."""

    def __init__(self, controller: object, reactor: Any) -> None:
        super().__init__(controller, reactor)
        self.udp_reactor = reactor

    def writeMessage(self, message: dns.Message, address: tuple[str, int]) -> None:
        message.authenticData = True
        super().writeMessage(message, address)

    def startListening(self) -> None:
        # Twisted's own listens with maxPacketSize=512 and so cuts an over-long
        # reply (Twisted's own server sends them) into a garbled one.
        self.udp_reactor.listenUDP(0, self, maxPacketSize=65535)


class _ADStream(dns.DNSProtocol):
    """TCP DNS client protocol whose queries ask for the AD bit."""

    def writeMessage(self, message: dns.Message) -> None:
        message.authenticData = True
        super().writeMessage(message)


class _Controller:
    """What Twisted's DNS protocols report to: the connection, and stray replies."""

    def __init__(self) -> None:
        self.connected: defer.Deferred[dns.DNSProtocol] = defer.Deferred()

    def connectionMade(self, protocol: dns.DNSProtocol) -> None:
        if not self.connected.called:
            self.connected.callback(protocol)

    def connectionLost(self, protocol: object) -> None:
        pass

    def messageReceived(self, message: dns.Message, protocol: object, address: object = None) -> None:
        pass  # a late or unsolicited reply: nobody waits for it


def _text(name: dns.Name) -> str:
    return name.name.decode("ascii", "replace").rstrip(".").lower()


def _payload(rr: dns.RRHeader) -> Any:
    """The record in ``rr``, of the class its ``type`` names. Any, because the
    header types it as the interface, and Twisted's record classes declare their
    fields ``None`` at class level, so a cast to one would not type them either."""
    return rr.payload


def _record_value(rtype: str, rr: dns.RRHeader) -> object:
    p = _payload(rr)
    if rtype == "TXT":
        return b"".join(p.data)
    if rtype == "MX":
        return (p.preference, _text(p.name))
    if rtype == "A":
        return p.dottedQuad()
    if rtype == "AAAA":
        return socket.inet_ntop(socket.AF_INET6, p.address)
    if rtype in ("PTR", "CNAME"):
        return _text(p.name)
    if rtype == "TLSA":
        data = p.data
        if len(data) < 3:
            raise ValueError("short TLSA record")
        return (data[0], data[1], data[2], bytes(data[3:]))
    raise ValueError(rtype)


def answer_from_message(name: str, rtype: str, message: dns.Message) -> Answer:
    """The ``Answer`` a reply gives for (name, rtype), following CNAMEs in the reply.

    Raises DNSTemporaryError for rcodes other than NOERROR and NXDOMAIN."""
    code = TYPE_CODES[rtype]
    if message.rCode == dns.ENAME:
        return Answer(name, rtype, (), exists=False, authenticated=bool(message.authenticData),
                      ttl=_negative_ttl(message))
    if message.rCode != dns.OK:
        raise DNSTemporaryError(f"{rtype} {name}: rcode {message.rCode}")
    owner = name
    # Follow a CNAME chain within the reply (at most 8 links), as a stub does.
    for _ in range(8):
        cname = [rr for rr in message.answers
                 if rr.type == dns.CNAME and _text(rr.name) == owner and code != dns.CNAME]
        if not cname:
            break
        owner = _text(_payload(cname[0]).name)
    values, ttls = [], []
    for rr in message.answers:
        if rr.type == code and _text(rr.name) == owner:
            try:
                values.append(_record_value(rtype, rr))
            except (ValueError, AttributeError, OSError):
                continue
            ttls.append(rr.ttl)
    ttl = float(min(ttls)) if ttls else _negative_ttl(message)
    return Answer(name, rtype, tuple(values), exists=True,
                  authenticated=bool(message.authenticData), ttl=ttl)


def _negative_ttl(message: dns.Message) -> float:
    for rr in message.authority:
        if rr.type == dns.SOA:
            return float(min(rr.ttl, _payload(rr).minimum))
    return DEFAULT_NEGATIVE_TTL


@implementer(IDNSLookup)
class StubLookup:
    """Asks ``servers`` in turn, each lookup bounded by ``timeout`` seconds in all.

    Implements: IDNSLookup. No cache of its own: wrap it in ``CachingLookup``.
    """

    def __init__(self, servers: Sequence[tuple[str, int]] | None = None, timeout: float = 5.0,
                 reactor: Any = None, resolv_conf: str = "/etc/resolv.conf") -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self._servers = list(servers) if servers else None
        self._resolv_conf = resolv_conf
        self.timeout = timeout

    @property
    def servers(self) -> list[tuple[str, int]]:
        # resolv.conf is read at the first lookup, not at construction.
        if self._servers is None:
            self._servers = resolv_conf_servers(self._resolv_conf)
        return self._servers

    def lookup(self, name: str, rtype: str) -> defer.Deferred[Answer]:
        try:
            asked = check_name(name)
        except DNSNameInvalid:
            return defer.fail()
        if rtype not in TYPE_CODES:
            return defer.fail(ValueError(f"unsupported record type {rtype}"))
        return defer.Deferred.fromCoroutine(self._lookup(asked, rtype))

    async def _lookup(self, name: str, rtype: str) -> Answer:
        clock: IReactorTime = self.reactor
        deadline = clock.seconds() + self.timeout
        query = dns.Query(name, TYPE_CODES[rtype], dns.IN)
        servers = self.servers
        # Each server gets an equal share of what is left; the last gets the rest.
        last_error: str = "no server"
        for i, server in enumerate(servers):
            left = deadline - clock.seconds()
            if left <= 0:
                break
            share = left / (len(servers) - i)
            try:
                message = await self._ask_udp(server, query, share)
                if message.trunc:
                    message = await self._ask_tcp(server, query, max(deadline - clock.seconds(), 0.1))
                return answer_from_message(name, rtype, message)
            except DNSTemporaryError as e:
                last_error = str(e)
            except (dns.DNSQueryTimeoutError, defer.TimeoutError, defer.CancelledError):
                last_error = f"timeout from {server[0]}:{server[1]}"
            except (OSError, ierror.ConnectError, ierror.CannotListenError, EOFError, ValueError) as e:
                last_error = f"{server[0]}:{server[1]}: {e}"
        raise DNSTemporaryError(f"{rtype} {name}: {last_error}")

    async def _ask_udp(self, server: tuple[str, int], query: dns.Query, timeout: float) -> dns.Message:
        protocol = _ADDatagram(controller=_Controller(), reactor=self.reactor)
        try:
            return await protocol.query(server, [query], timeout=timeout)
        finally:
            if protocol.transport is not None:
                protocol.transport.stopListening()

    async def _ask_tcp(self, server: tuple[str, int], query: dns.Query, timeout: float) -> dns.Message:
        host, port = server
        controller = _Controller()
        endpoint_class = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        endpoint = endpoint_class(self.reactor, host, port, timeout=max(int(timeout), 1))
        connecting = connectProtocol(endpoint, _ADStream(controller=controller, reactor=self.reactor))
        connecting.addTimeout(timeout, self.reactor)
        protocol = await connecting
        try:
            await controller.connected
            return await protocol.query([query], timeout=timeout)
        finally:
            protocol.transport.loseConnection()
