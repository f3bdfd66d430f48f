"""The DNS layer against a real DNS server on loopback (mailhost.testing.dns)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from zope.interface.verify import verifyObject

from mailhost.dns import (
    Answer,
    CachingLookup,
    DNSNameInvalid,
    DNSSettings,
    DNSTemporaryError,
    IDNSLookup,
    StubLookup,
    make_lookup,
)
from mailhost.testing.dns import TestDNSServer

LONG_TXT = "v=DKIM1; k=rsa; p=" + "A" * 600  # > 512 octets: truncated over UDP, asked over TCP

ZONES = {
    "example.test": {"MX": [(10, "mx.example.test"), (20, "mx2.example.test")],
                     "TXT": ["v=spf1 ip4:127.0.0.1 -all", "other text"],
                     "A": ["192.0.2.1"], "AAAA": ["2001:db8::1"]},
    "sel._domainkey.example.test": {"TXT": [LONG_TXT]},
    "1.0.0.127.in-addr.arpa": {"PTR": ["mx.example.test"]},
    "alias.example.test": {"CNAME": ["example.test"]},
    "_25._tcp.mx.example.test": {"TLSA": [(3, 1, 1, bytes(range(32)))]},
    "empty.example.test": {},
}


@pytest.fixture
def dns_server(dns_server):
    dns_server.zones.update(ZONES)
    return dns_server


def stub(server: TestDNSServer, timeout: float = 2.0) -> StubLookup:
    return StubLookup([server.address], timeout=timeout)


@pytest_twisted.ensureDeferred
async def test_record_types(dns_server):
    lookup = stub(dns_server)
    verifyObject(IDNSLookup, lookup)
    mx = await lookup.lookup("Example.TEST.", "MX")
    assert sorted(mx.records) == [(10, "mx.example.test"), (20, "mx2.example.test")]
    assert mx.exists and not mx.authenticated and mx.ttl == 300
    txt = await lookup.lookup("example.test", "TXT")
    assert set(txt.records) == {b"v=spf1 ip4:127.0.0.1 -all", b"other text"}
    assert (await lookup.lookup("example.test", "A")).records == ("192.0.2.1",)
    assert (await lookup.lookup("example.test", "AAAA")).records == ("2001:db8::1",)
    ptr = await lookup.lookup("1.0.0.127.in-addr.arpa", "PTR")
    assert ptr.records == ("mx.example.test",)
    via_cname = await lookup.lookup("alias.example.test", "A")
    assert via_cname.records == ("192.0.2.1",)


@pytest_twisted.ensureDeferred
async def test_long_txt_is_retried_over_tcp(dns_server):
    answer = await stub(dns_server).lookup("sel._domainkey.example.test", "TXT")
    assert answer.records == (LONG_TXT.encode(),)


@pytest_twisted.ensureDeferred
async def test_nxdomain_and_nodata_are_answers(dns_server):
    lookup = stub(dns_server)
    nx = await lookup.lookup("nowhere.example.test", "TXT")
    assert not nx.exists and nx.void and nx.ttl == 60
    nodata = await lookup.lookup("empty.example.test", "TXT")
    assert nodata.exists and nodata.void and nodata.ttl == 60


@pytest_twisted.ensureDeferred
async def test_tlsa_and_ad_bit(dns_server):
    lookup = stub(dns_server)
    plain = await lookup.lookup("_25._tcp.mx.example.test", "TLSA")
    assert plain.records == ((3, 1, 1, bytes(range(32))),) and not plain.authenticated
    dns_server.authenticated.add("_25._tcp.mx.example.test")
    signed = await lookup.lookup("_25._tcp.mx.example.test", "TLSA")
    assert signed.authenticated


@pytest_twisted.ensureDeferred
async def test_timeout_and_servfail_are_temporary(dns_server):
    lookup = stub(dns_server, timeout=0.5)
    dns_server.faults["slow.example.test"] = "timeout"
    dns_server.faults["broken.example.test"] = "servfail"
    started = reactor.seconds()
    with pytest.raises(DNSTemporaryError):
        await lookup.lookup("slow.example.test", "TXT")
    assert reactor.seconds() - started < 2.0
    with pytest.raises(DNSTemporaryError):
        await lookup.lookup("broken.example.test", "TXT")


@pytest_twisted.ensureDeferred
async def test_unaskable_names_fail_at_once(dns_server):
    lookup = stub(dns_server)
    for bad in ("", "a..b", "x" * 64 + ".test", ("a." * 130) + "test"):
        with pytest.raises(DNSNameInvalid):
            await lookup.lookup(bad, "TXT")
    assert dns_server.queries == []


@pytest_twisted.ensureDeferred
async def test_cache_keeps_answers_for_their_ttl(dns_server):
    clock = task.Clock()
    cache = CachingLookup(stub(dns_server), clock=clock, max_entries=2)
    verifyObject(IDNSLookup, cache)
    first = await cache.lookup("example.test", "MX")
    again = await cache.lookup("EXAMPLE.test.", "MX")
    assert again is first and dns_server.queries.count(("example.test", "MX")) == 1
    nx = await cache.lookup("nowhere.example.test", "A")
    await cache.lookup("nowhere.example.test", "A")
    assert not nx.exists and dns_server.queries.count(("nowhere.example.test", "A")) == 1
    clock.advance(61)  # the negative TTL passes; the positive one (300) does not
    await cache.lookup("nowhere.example.test", "A")
    await cache.lookup("example.test", "MX")
    assert dns_server.queries.count(("nowhere.example.test", "A")) == 2
    assert dns_server.queries.count(("example.test", "MX")) == 1
    clock.advance(300)
    await cache.lookup("example.test", "MX")
    assert dns_server.queries.count(("example.test", "MX")) == 2
    await cache.lookup("example.test", "A")
    assert len(cache) == 2  # bounded: the least recently used went


@pytest_twisted.ensureDeferred
async def test_cache_does_not_keep_failures_and_shares_inflight(dns_server):
    cache = CachingLookup(stub(dns_server, timeout=0.3))
    dns_server.faults["broken.example.test"] = "servfail"
    for _ in range(2):
        with pytest.raises(DNSTemporaryError):
            await cache.lookup("broken.example.test", "TXT")
    assert dns_server.queries.count(("broken.example.test", "TXT")) == 2
    a, b = cache.lookup("example.test", "A"), cache.lookup("example.test", "A")
    assert (await a) is (await b)
    assert dns_server.queries.count(("example.test", "A")) == 1


def test_unused_lookup_opens_nothing(tmp_path):
    """make_lookup neither reads resolv.conf nor opens a socket or timer until asked."""
    clock = task.Clock()
    lookup = make_lookup(DNSSettings(), reactor=clock)
    assert clock.getDelayedCalls() == []
    assert lookup.upstream._servers is None  # resolv.conf not read yet


def test_answer_void():
    assert Answer("a", "TXT").void and not Answer("a", "TXT", (b"x",)).void
