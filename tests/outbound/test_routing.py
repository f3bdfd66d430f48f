"""Routing unit tests with a fake IResolver: MX order, fallback, null MX, failures."""

from __future__ import annotations

import random

import pytest
import pytest_twisted
from twisted.names import error

from mailhost.outbound.routing import (
    PermanentRoutingError,
    Router,
    TemporaryRoutingError,
    order_mx,
    split_hostport,
)
from tests.outbound.fakes import FakeResolver


@pytest_twisted.ensureDeferred
async def test_mx_hosts_in_preference_order():
    r = FakeResolver(
        mx={"example.com": [(20, "b.example.com"), (10, "a.example.com"), (30, "c.example.com")]},
        a={"a.example.com": ["192.0.2.1"], "b.example.com": ["192.0.2.2"],
           "c.example.com": ["192.0.2.3"]},
        aaaa={"a.example.com": ["2001:db8::1"]},
    )
    rt = await Router(r, port=2525).route("Example.COM")
    assert [h.name for h in rt.hops] == ["a.example.com", "b.example.com", "c.example.com"]
    assert rt.hops[0].addresses == ["192.0.2.1", "2001:db8::1"]
    assert all(h.port == 2525 for h in rt.hops)

def test_equal_preference_is_randomised():
    seen = set()
    rng = random.Random(1)
    recs = [(10, "a"), (10, "b"), (10, "c"), (5, "first")]
    for _ in range(50):
        out = order_mx(list(recs), rng)
        assert out[0] == (5, "first")
        seen.add(tuple(n for _, n in out[1:]))
    assert len(seen) > 1

@pytest_twisted.ensureDeferred
async def test_no_mx_falls_back_to_address_records():
    r = FakeResolver(a={"plain.example": ["192.0.2.9"]})
    rt = await Router(r).route("plain.example")
    assert [(h.name, h.addresses, h.port) for h in rt.hops] == [
        ("plain.example", ["192.0.2.9"], 25)]

@pytest_twisted.ensureDeferred
async def test_no_mx_and_no_address_is_permanent():
    r = FakeResolver(exists={"empty.example"})
    with pytest.raises(PermanentRoutingError) as e:
        await Router(r).route("empty.example")
    assert e.value.status == "5.1.2"

@pytest_twisted.ensureDeferred
async def test_null_mx_bounces_with_5_1_10():
    r = FakeResolver(mx={"nomail.example": [(0, "")]}, a={"nomail.example": ["192.0.2.1"]})
    with pytest.raises(PermanentRoutingError) as e:
        await Router(r).route("nomail.example")
    assert e.value.status == "5.1.10"

@pytest_twisted.ensureDeferred
async def test_nxdomain_is_permanent():
    with pytest.raises(PermanentRoutingError) as e:
        await Router(FakeResolver()).route("nowhere.example")
    assert e.value.status == "5.1.2"

@pytest.mark.parametrize("exc", [error.DNSServerError, error.DNSQueryTimeoutError,
                                 error.DNSQueryRefusedError])
@pytest_twisted.ensureDeferred
async def test_servfail_and_timeout_are_temporary(exc):
    r = FakeResolver(mx={"flaky.example": exc})
    with pytest.raises(TemporaryRoutingError) as e:
        await Router(r).route("flaky.example")
    assert e.value.status == "4.4.3"

@pytest_twisted.ensureDeferred
async def test_mx_host_without_address_is_skipped_and_all_missing_is_temporary():
    r = FakeResolver(mx={"d.example": [(10, "gone.d.example"), (20, "ok.d.example")]},
                     a={"ok.d.example": ["192.0.2.5"]})
    rt = await Router(r).route("d.example")
    assert [h.name for h in rt.hops] == ["ok.d.example"]
    r2 = FakeResolver(mx={"d.example": [(10, "gone.d.example")]},
                      a={"gone.d.example": error.DNSServerError})
    with pytest.raises(TemporaryRoutingError):
        await Router(r2).route("d.example")

@pytest_twisted.ensureDeferred
async def test_smarthost_replaces_mx():
    r = FakeResolver()
    rt = await Router(r, smarthost="127.0.0.1:2600").route("anything.example")
    assert rt.smarthost and rt.hops[0].addresses == ["127.0.0.1"] and rt.hops[0].port == 2600
    assert r.queries == []

def test_split_hostport():
    assert split_hostport("relay.example:587") == ("relay.example", 587)
    assert split_hostport("[::1]:2525") == ("::1", 2525)
    assert split_hostport("host") == ("host", 25)
