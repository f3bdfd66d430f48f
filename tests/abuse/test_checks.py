"""The envelope checks one by one (interfaces, zone specs, weights, greylist expiry,
token buckets), without sockets: ``StaticLookup`` answers DNS, ``task.Clock`` time."""

from __future__ import annotations

import ipaddress

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from zope.interface.verify import verifyObject

from mailhost.abuse import AbuseConfigError, AbuseSettings, build_checks
from mailhost.abuse.dnsbl import DNSBLCheck, Zone, ZoneSpecError
from mailhost.abuse.fcrdns import FCrDNSCheck
from mailhost.abuse.greylist import GreylistCheck, GreylistDB
from mailhost.abuse.ratelimit import RateLimitCheck, RateLimiter
from mailhost.message.checks import ClientContext, EnvelopeChecks, IEnvelopeCheck
from mailhost.message.stage import Verdict
from mailhost.testing.dns import StaticLookup


def test_every_check_provides_the_interface(tmp_path):
    lookup = StaticLookup()
    for check in (DNSBLCheck(lookup), FCrDNSCheck(lookup), RateLimitCheck(RateLimiter()),
                  GreylistCheck(GreylistDB(str(tmp_path / "g.sqlite")))):
        assert verifyObject(IEnvelopeCheck, check)


def test_zone_spec():
    z = Zone.parse("zen.example=127.0.0.2-127.0.0.11,127.0.0.20*3")
    assert (z.name, z.weight) == ("zen.example", 3)
    assert [z.counts(f"127.0.0.{i}") for i in (1, 2, 11, 12, 20)] == [
        False, True, True, False, True]
    wl = Zone.parse("list.dnswl.example=127.0.[0..255].[1;2..3]")
    assert [wl.counts(a) for a in ("127.0.10.1", "127.0.0.3", "127.0.5.0", "127.0.0.255",
                                   "127.1.0.1")] == [True, True, False, False, False]
    assert Zone.parse("b.example").counts("127.0.0.2")
    assert not Zone.parse("b.example").counts("127.255.255.254")  # a list's error code
    for bad in ("", "=127.0.0.2", "z.example=", "z.example=1.2.3", "z.example*x",
                "z.example=127.0.0.9-127.0.0.2",
                "z.example=127.0.[1..].1", "z.example=127.0.[3..2].1", "z.example=127.[0].1"):
        with pytest.raises(ZoneSpecError):
            Zone.parse(bad)


def test_a_bad_zone_is_a_config_error_naming_the_key():
    with pytest.raises(AbuseConfigError, match="dnsbl.zones"):
        build_checks(AbuseSettings(dnsbl_zones=("z.example=nope",)), StaticLookup())


def _run(checks: EnvelopeChecks, client: ClientContext) -> Verdict | None:
    checks.connect(client)
    result: list = []
    checks.rcpt(client, "s@x.test", "r@y.test", 0).addBoth(result.append)
    return result[0]


def test_weights_add_up_to_the_threshold():
    lookup = StaticLookup({"2.2.0.192.a.example": {"A": ["127.0.0.2"]},
                           "2.2.0.192.b.example": {"A": ["127.0.0.2"], "TXT": ["b says no"]},
                           "3.2.0.192.a.example": {"A": ["127.0.0.2"]}})
    check = DNSBLCheck(lookup, [Zone.parse("a.example"), Zone.parse("b.example*2")],
                       threshold=3)
    verdict = _run(EnvelopeChecks([check]), ClientContext("192.0.2.2"))
    assert verdict is not None and (verdict.code, verdict.status) == (554, "5.7.1")
    assert verdict.text == ("Service unavailable; client [192.0.2.2] blocked using "
                            "b.example; b says no")
    assert _run(EnvelopeChecks([check]), ClientContext("192.0.2.3")) is None  # 1 < 3


def test_temperror_skips_the_zone_and_is_recorded():
    lookup = StaticLookup({"2.2.0.192.b.example": {"A": ["127.0.0.2"]}})
    lookup.faults["2.2.0.192.a.example"] = "timeout"
    check = DNSBLCheck(lookup, [Zone.parse("a.example"), Zone.parse("b.example")])
    client = ClientContext("192.0.2.2")
    verdict = _run(EnvelopeChecks([check]), client)
    assert verdict is not None and verdict.text.endswith("blocked using b.example")
    assert client.results["dnsbl"].temperrors == ["a.example"]


def test_a_check_that_crashes_is_skipped():
    class Broken:
        name = "broken"

        def connect(self, client):
            raise RuntimeError("connect")

        def mail(self, client, sender):
            raise RuntimeError("mail")

        def rcpt(self, client, sender, recipient, accepted):
            return defer.fail(RuntimeError("rcpt"))

    checks = EnvelopeChecks([Broken()])
    assert _run(checks, ClientContext("192.0.2.1")) is None


def test_fcrdns_passes_on_any_ptr_name_that_leads_back():
    lookup = StaticLookup({
        "1.2.0.192.in-addr.arpa": {"PTR": ["a.example", "b.example"]},
        "a.example": {"A": ["192.0.2.9"]},
        "b.example": {"A": ["192.0.2.1"]},
        ipaddress.ip_address("2001:db8::1").reverse_pointer: {"PTR": ["v6.example"]},
        "v6.example": {"AAAA": ["2001:db8::1"], "A": ["192.0.2.1"]},
    })
    check = FCrDNSCheck(lookup)
    for ip, name in (("192.0.2.1", "b.example"), ("2001:db8::1", "v6.example"),
                     ("192.0.2.7", "unknown")):
        client = ClientContext(ip)
        _run(EnvelopeChecks([check]), client)
        assert client.name == name


def test_token_bucket_refills_at_the_hourly_rate():
    clock = task.Clock()
    limiter = RateLimiter(messages_per_hour=60, clock=clock)
    assert all(limiter.take_message("u@x") == 0.0 for _ in range(60))
    wait = limiter.take_message("u@x")
    assert wait == pytest.approx(60.0)
    clock.advance(59)
    assert limiter.take_message("u@x") > 0
    clock.advance(2)
    assert limiter.take_message("u@x") == 0.0
    clock.advance(3 * 3600)  # never more than one hour's worth
    assert sum(limiter.take_message("u@x") == 0.0 for _ in range(100)) == 60


def test_bucket_table_forgets_refilled_users():
    """Waves of users an hour apart: the table holds about the recent ones, never
    every user ever seen."""
    clock = task.Clock()
    limiter = RateLimiter(messages_per_hour=10, clock=clock)
    for wave in range(5):
        for i in range(1500):
            limiter.take_message(f"u{wave}.{i}@x")
        assert len(limiter._buckets) <= 2 * 1500 + 1024
        clock.advance(3600)


@pytest_twisted.ensureDeferred
async def test_greylist_expiry_with_an_injected_clock(tmp_path):
    clock = task.Clock()
    clock.advance(1_000_000)
    db = GreylistDB(str(tmp_path / "g.sqlite"), reactor=reactor, clock=clock, delay=300,
                    pending_ttl=86400, passed_ttl=36 * 86400)
    db.start()
    try:
        key = ("192.0.2.0/24", "s@x.test", "r@y.test")
        assert await db.check(*key) == 300
        clock.advance(100)
        assert await db.check(*key) == 200  # the window counts from the first try
        clock.advance(200)
        assert await db.check(*key) == 0
        clock.advance(35 * 86400)
        assert await db.check(*key) == 0  # passed: known for 36 days after last seen
        clock.advance(37 * 86400)
        assert await db.check(*key) == 300  # expired: a new triplet again
        other = ("192.0.2.0/24", "t@x.test", "r@y.test")
        assert await db.check(*other) == 300
        clock.advance(86401)  # never retried for a day: forgotten
        assert await db.purge() == 2
        assert await db.count() == 0
    finally:
        await db.stop()
    for suffix in ("", "-wal", "-shm"):
        path = tmp_path / f"g.sqlite{suffix}"
        assert not path.exists() or path.stat().st_mode & 0o777 == 0o600, suffix


def test_connect_lookups_are_cut_at_the_deadline_however_many_in_a_row():
    """A DNS that answers each lookup just before its own timeout would make a check
    of two lookups in a row (PTR, then A) take twice the DNS timeout; the deadline
    counts from the connect instead."""
    from mailhost.dns.interfaces import Answer

    clock = task.Clock()
    asked: list[tuple[str, str]] = []

    class SlowLookup:
        def lookup(self, name, rtype):
            asked.append((name, rtype))
            d = defer.Deferred()
            answer = (Answer(name, rtype, ("ptr.example",)) if rtype == "PTR"
                      else Answer(name, rtype, ("192.0.2.1",)))
            clock.callLater(0.9, d.callback, answer)
            return d

    checks = EnvelopeChecks([FCrDNSCheck(SlowLookup(), require=True)], deadline=1.0,
                            clock=clock)
    client = checks.connect(ClientContext("192.0.2.1"))
    result: list = []
    checks.mail(client, "s@x.test").addBoth(result.append)
    clock.advance(0.9)  # the PTR answer; the A lookup starts
    assert asked == [("1.2.0.192.in-addr.arpa", "PTR"), ("ptr.example", "A")]
    assert result == []
    clock.advance(0.1)  # the deadline: the A lookup is given up
    assert result == [None] and client.pending == {}
    assert client.name == "unknown"
    verdict: list = []
    checks.rcpt(client, "s@x.test", "r@y.test", 0).addBoth(verdict.append)
    assert (verdict[0].code, verdict[0].status) == (450, "4.7.25")  # temporary, never 5xx
    clock.advance(5)  # the late answer changes nothing and raises nothing
