"""SPF (RFC 7208) against DNS: results, limits, and hostile records."""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from mailhost.dns import StubLookup
from mailhost.mailauth.spf import SPFChecker
from mailhost.testing.dns import StaticLookup

ZONES = {
    "example.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 a:mail.example.test mx include:_spf.partner.test -all",
                             "some verification token"],
                     "MX": [(10, "mx.example.test")]},
    "mail.example.test": {"A": ["198.51.100.7"]},
    "mx.example.test": {"A": ["198.51.100.25"], "AAAA": ["2001:db8::25"]},
    "_spf.partner.test": {"TXT": ["v=spf1 ip6:2001:db8:beef::/48 ~all"]},
    "soft.test": {"TXT": ["v=spf1 ~all"]},
    "neutral.test": {"TXT": ["v=spf1 ?all"]},
    "none.test": {"TXT": ["not spf"]},
    "two.test": {"TXT": ["v=spf1 -all", "v=spf1 +all"]},
    "redirect.test": {"TXT": ["v=spf1 redirect=example.test"]},
    "macro.test": {"TXT": ["v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} -all"]},
    "1.2.0.192.alice._spf.macro.test": {"A": ["127.0.0.2"]},
    "helo.example.test": {"TXT": ["v=spf1 a -all"], "A": ["203.0.113.9"]},
    "slow.test": {"TXT": ["v=spf1 a:dns.slow.test -all"]},
    "voids.test": {"TXT": ["v=spf1 a:n1.voids.test a:n2.voids.test a:n3.voids.test -all"]},
}
# 11 includes in a chain: the 11th DNS-querying term is a permerror.
for i in range(12):
    ZONES[f"l{i}.loop.test"] = {"TXT": [f"v=spf1 include:l{i + 1}.loop.test -all"]}
ZONES["many.test"] = {"TXT": ["v=spf1 include:l0.loop.test -all"]}


@pytest.fixture
def spf(dns_server):
    dns_server.zones.update(ZONES)
    dns_server.faults["dns.slow.test"] = "timeout"
    return SPFChecker(StubLookup([dns_server.address], timeout=0.5))


@pytest.mark.parametrize("ip, mail_from, expected", [
    ("192.0.2.55", "alice@example.test", "pass"),  # ip4
    ("198.51.100.7", "alice@example.test", "pass"),  # a:
    ("198.51.100.25", "alice@example.test", "pass"),  # mx
    ("2001:db8::25", "alice@example.test", "pass"),  # mx over IPv6
    ("2001:db8:beef::1", "alice@example.test", "pass"),  # include
    ("::ffff:192.0.2.1", "alice@example.test", "pass"),  # IPv4-mapped is IPv4
    ("203.0.113.1", "alice@example.test", "fail"),
    ("203.0.113.1", "bob@soft.test", "softfail"),
    ("203.0.113.1", "bob@neutral.test", "neutral"),
    ("203.0.113.1", "bob@none.test", "none"),
    ("203.0.113.1", "bob@nxdomain.test", "none"),
    ("203.0.113.1", "bob@two.test", "permerror"),
    ("192.0.2.1", "bob@redirect.test", "pass"),
    ("203.0.113.1", "bob@redirect.test", "fail"),
    ("192.0.2.1", "alice@macro.test", "pass"),
    ("192.0.2.2", "alice@macro.test", "fail"),
    ("203.0.113.1", "x@many.test", "permerror"),  # too many lookups
    ("203.0.113.1", "x@voids.test", "permerror"),  # too many void lookups
    ("203.0.113.1", "x@slow.test", "temperror"),  # DNS timeout
])
@pytest_twisted.ensureDeferred
async def test_mail_from(spf, ip, mail_from, expected):
    result = await spf.check_mail_from(ip, mail_from, "client.example.net")
    assert result.result == expected, result
    assert result.identity == "mailfrom"


@pytest_twisted.ensureDeferred
async def test_helo_and_null_sender(spf):
    helo = await spf.check_helo("203.0.113.9", "helo.example.test")
    assert (helo.result, helo.identity) == ("pass", "helo")
    bounce = await spf.check_mail_from("203.0.113.9", "<>", "helo.example.test")
    assert (bounce.result, bounce.sender) == ("pass", "postmaster@helo.example.test")
    assert (await spf.check_helo("203.0.113.9", "[203.0.113.9]")).result == "none"
    assert (await spf.check_helo("203.0.113.10", "helo.example.test")).result == "fail"


@pytest_twisted.ensureDeferred
async def test_servfail_is_temperror(spf, dns_server):
    dns_server.faults["example.test"] = "servfail"
    assert (await spf.check_mail_from("192.0.2.1", "a@example.test", "x.test")).result == "temperror"


@pytest.mark.parametrize("record", [
    "v=spf1 ip4:192.0.2.1/33 -all", "v=spf1 ip4:300.1.1.1 -all", "v=spf1 ip6:192.0.2.1 -all",
    "v=spf1 foo -all", "v=spf1 a:%{z}.test -all", "v=spf1 include -all", "v=spf1 a/024 -all",
    "v=spf1 redirect=a.test redirect=b.test", "v=spf1 exists:%{ -all", "v=spf1 =all",
    "v=spf1 -all foo:bar",  # a syntax error anywhere, even after -all
])
def test_syntax_errors_are_permerror(record):
    lookup = StaticLookup({"bad.test": {"TXT": [record]}})
    assert run(SPFChecker(lookup).check_mail_from("192.0.2.1", "a@bad.test", "h.test")).result \
        == "permerror"


def run(coroutine):
    out = []
    Deferred.fromCoroutine(coroutine).addBoth(out.append)
    assert out, "StaticLookup answers at once"
    if isinstance(out[0], Exception) or hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


terms = st.sampled_from(["a", "mx", "ptr", "all", "-all", "~all", "?all", "+all", "ip4:192.0.2.0/24",
                         "ip6:2001:db8::/32", "include:i.test", "include:bad.test", "exists:%{i}.e.test",
                         "redirect=i.test", "exp=e.test", "a:%{d}", "mx:x.test/24", "a//64", "%{",
                         "ip4:", "include:", "a:", "/", "v=spf1", "foo=bar", ":", "%%", "ptr:%{h}",
                         "a:%{l1r-}.%{o}", "exists:%{p}.test", "ip4:1.2.3.4/", "mx/0//0", "foo"])


@settings(max_examples=300, deadline=None)
@given(record=st.lists(terms, max_size=8).map(lambda t: "v=spf1 " + " ".join(t))
       | st.text(max_size=60).map(lambda t: "v=spf1 " + t),
       ip=st.sampled_from(["192.0.2.1", "2001:db8::1", "10.0.0.1"]),
       sender=st.sampled_from(["a@bad.test", "@bad.test", "a.b-c@bad.test"]))
def test_malformed_records_never_crash(record, ip, sender):
    """Every record gives one of the seven results; bad ones permerror, none raise."""
    lookup = StaticLookup({"bad.test": {"TXT": [record], "A": ["192.0.2.1"], "MX": [(5, "bad.test")]},
                           "i.test": {"TXT": ["v=spf1 include:bad.test ?all"]},
                           "1.2.0.192.in-addr.arpa": {"PTR": ["bad.test"]}})
    lookup.faults["e.test"] = "timeout"
    result = run(SPFChecker(lookup).check_mail_from(ip, sender, "h.test"))
    assert result.result in ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")
    if " %{ " in record + " " or " foo " in record + " ":
        assert result.result == "permerror"  # a syntax error anywhere
