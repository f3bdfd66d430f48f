"""A real DNS server from twisted.names on a loopback port, serving one test zone."""

from __future__ import annotations

from twisted.internet import reactor as default_reactor
from twisted.names import authority, common, dns, server

from tests.mailhost_process import free_port


class MemoryAuthority(authority.FileAuthority):
    """A zone held in a dict: name (str) -> list of dns.Record_* objects."""

    def __init__(self, origin: str, records: dict[str, list]) -> None:
        common.ResolverBase.__init__(self)
        self._cache = {}
        soa = dns.Record_SOA(mname=f"ns.{origin}", rname=f"hostmaster.{origin}", serial=1,
                             refresh=60, retry=60, expire=600, minimum=5, ttl=5)
        self.soa = (origin.encode(), soa)
        self.records = {origin.encode(): [soa]}
        for name, recs in records.items():
            self.records.setdefault(name.lower().encode(), []).extend(recs)


def start_dns(records: dict[str, list], origin: str = "test", reactor=None):
    """Serve ``records`` over UDP and TCP on 127.0.0.1; returns (port, stop)."""
    reactor = reactor or default_reactor
    factory = server.DNSServerFactory(authorities=[MemoryAuthority(origin, records)])
    for _ in range(20):
        port = free_port()
        try:
            udp = reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        except Exception:
            continue
        tcp = reactor.listenTCP(port, factory, interface="127.0.0.1")
        break
    else:
        raise RuntimeError("no free DNS port")

    def stop():
        return udp.stopListening(), tcp.stopListening()

    return port, stop


def mx(pref: int, host: str, ttl: int = 5):
    return dns.Record_MX(pref, host, ttl=ttl)


def a(address: str, ttl: int = 5):
    return dns.Record_A(address, ttl=ttl)
