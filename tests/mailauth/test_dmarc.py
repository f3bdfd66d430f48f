"""DMARC alignment and policy, the organizational domain, and Authentication-Results."""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from mailhost.dns import StubLookup
from mailhost.mailauth import authresults
from mailhost.mailauth.dkim import DKIMResult, DKIMSigner, DKIMVerifier
from mailhost.mailauth.dmarc import DMARCChecker, DMARCResult, from_domain, parse_record
from mailhost.mailauth.orgdomain import aligned, organizational_domain
from mailhost.mailauth.spf import SPFChecker, SPFResult
from mailhost.testing.dns import StaticLookup
from tests.mailauth.conftest import publish


def test_organizational_domain_from_the_public_suffix_list():
    assert organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert organizational_domain("a.b.example.com.") == "example.com"
    assert organizational_domain("mx.example.test") == "example.test"
    assert aligned("mail.example.co.uk", "example.co.uk", "r")
    assert not aligned("mail.example.co.uk", "example.co.uk", "s")
    assert not aligned("example.co.uk", "other.co.uk", "r")


def test_record_parsing():
    r = parse_record("v=DMARC1; p=reject; sp=quarantine; adkim=s; pct=50; rua=mailto:x@y")
    assert (r.policy, r.subdomain_policy, r.adkim, r.aspf, r.pct) == ("reject", "quarantine", "s", "r", 50)
    assert parse_record("v=DMARC1; p=bogus; rua=mailto:a@b").policy == "none"
    assert parse_record("v=DMARC1;p=none").subdomain_policy == "none"


def test_from_domain():
    assert from_domain(b"From: A <a@Example.TEST>\r\nTo: b@x\r\n\r\n") == "example.test"
    assert from_domain(b"From: a@x.test, b@y.test\r\n\r\n") is None
    assert from_domain(b"From: a@x.test\r\nFrom: b@y.test\r\n\r\n") is None
    assert from_domain(b"To: b@x\r\n\r\n") is None
    assert from_domain(b"From: A\r\n <a@folded.test>\r\n\r\n") == "folded.test"


MESSAGE = (b"From: CEO <ceo@example.test>\r\nTo: bob@example.net\r\nSubject: pay\r\n"
           b"Date: Fri, 04 Dec 2026 23:00:00 +0000\r\n\r\nPay now.\r\n")


@pytest.fixture
def zones(dns_server):
    dns_server.zones.update({
        "example.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]},
        "_dmarc.example.test": {"TXT": ["v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@example.test"]},
        "bounces.example.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]},
        "other.test": {"TXT": ["v=spf1 +all"]},
    })
    return dns_server


async def evaluate(dns_server, message, ip, mail_from):
    lookup = StubLookup([dns_server.address], timeout=1.0)
    spf = await SPFChecker(lookup).check_mail_from(ip, mail_from, "client.test")
    dkim = await DKIMVerifier(lookup).verify(message)
    head = message.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    return spf, dkim, await DMARCChecker(lookup).check(from_domain(head), spf, dkim)


@pytest_twisted.ensureDeferred
async def test_pass_by_aligned_spf(zones):
    # relaxed alignment: bounces.example.test and example.test share the org domain
    spf, dkim, dmarc = await evaluate(zones, MESSAGE, "192.0.2.9", "b@bounces.example.test")
    assert (spf.result, dmarc.result, dmarc.spf_aligned, dmarc.dkim_aligned) == ("pass", "pass", True, False)


@pytest_twisted.ensureDeferred
async def test_pass_by_aligned_dkim_although_spf_fails(zones, rsa_key):
    publish(zones, rsa_key)
    message = DKIMSigner([rsa_key]).sign(MESSAGE, "example.test") + MESSAGE
    spf, dkim, dmarc = await evaluate(zones, message, "203.0.113.5", "x@example.test")
    assert (spf.result, dkim[0].result, dmarc.result, dmarc.dkim_aligned) == ("fail", "pass", "pass", True)


@pytest_twisted.ensureDeferred
async def test_fail_when_spf_passes_for_an_unaligned_domain(zones):
    """A forger's own domain passes SPF, but it is not the From: domain: p=reject."""
    spf, dkim, dmarc = await evaluate(zones, MESSAGE, "203.0.113.5", "x@other.test")
    assert (spf.result, dkim, dmarc.result) == ("pass", [], "fail")
    assert (dmarc.policy, dmarc.disposition, dmarc.record_domain) == ("reject", "reject", "example.test")


@pytest_twisted.ensureDeferred
async def test_subdomain_policy_and_none(zones):
    message = MESSAGE.replace(b"ceo@example.test", b"ceo@news.example.test")
    _spf, _dkim, dmarc = await evaluate(zones, message, "203.0.113.5", "x@other.test")
    assert (dmarc.result, dmarc.policy, dmarc.record_domain) == ("fail", "quarantine", "example.test")
    message = MESSAGE.replace(b"ceo@example.test", b"ceo@nodmarc.test")
    _spf, _dkim, dmarc = await evaluate(zones, message, "203.0.113.5", "x@other.test")
    assert dmarc.result == "none"


@pytest_twisted.ensureDeferred
async def test_dns_failure_is_temperror(zones):
    zones.faults["_dmarc.example.test"] = "servfail"
    _spf, _dkim, dmarc = await evaluate(zones, MESSAGE, "192.0.2.9", "b@example.test")
    assert dmarc.result == "temperror"


@pytest_twisted.ensureDeferred
async def test_pct_sampling_gives_the_milder_policy():
    lookup = StaticLookup({"_dmarc.example.test": {"TXT": ["v=DMARC1; p=reject; pct=10"]}})
    spf = SPFResult("fail", "example.test", "mailfrom")
    sampled = await DMARCChecker(lookup, rng=lambda: 0.05).check("example.test", spf, [])
    unsampled = await DMARCChecker(lookup, rng=lambda: 0.5).check("example.test", spf, [])
    assert (sampled.disposition, unsampled.disposition) == ("reject", "quarantine")


@settings(max_examples=300, deadline=None)
@given(record=st.text(max_size=80) | st.lists(st.sampled_from(
    ["v=DMARC1", "p=reject", "p=", "sp=quarantine", "pct=x", "pct=-5", "adkim=q", "aspf=s", "rua=mailto:a",
     "v=DMARC2", "p=none", "=", ";", "p", " "]), max_size=8).map("; ".join))
def test_malformed_dmarc_records_never_crash(record):
    lookup = StaticLookup({"_dmarc.example.test": {"TXT": [record]}})
    out = []
    Deferred.fromCoroutine(DMARCChecker(lookup).check(
        "example.test", SPFResult("fail", "x.test", "mailfrom"), [])).addBoth(out.append)
    assert out[0].result in ("none", "fail"), out


def test_authentication_results_header():
    header = authresults.build(
        "mx.example.net",
        spf=[SPFResult("pass", "example.test", "mailfrom", "ip4:192.0.2.0/24 matched", "a@example.test"),
             SPFResult("none", "client.test", "helo")],
        dkim=[DKIMResult("pass", "example.test", "s1", "rsa-sha256", "", "abcdEFGH")],
        dmarc=DMARCResult("pass", "example.test", "reject"))
    text = header.decode()
    assert text.startswith("Authentication-Results: mx.example.net;") and text.endswith("\r\n")
    flat = " ".join(text.split())
    for part in ("spf=pass", "smtp.mailfrom=a@example.test", "smtp.helo=client.test", "dkim=pass",
                 "header.d=example.test", "header.s=s1", "header.b=abcdEFGH", "dmarc=pass",
                 "header.from=example.test", "policy.dmarc=reject"):
        assert part in flat, (part, text)
    assert authresults.claimed_authserv_id(text.split(":", 1)[1]) == "mx.example.net"
    assert authresults.build("mx.example.net", dkim=[]).decode().count("dkim=none") == 1


def test_forged_results_with_our_id_are_removed():
    block = (b"Received: from x\r\n"
             b"Authentication-Results: MX.example.net; dkim=pass\r\n header.d=bank.test\r\n"
             b"Authentication-Results: other.example; spf=fail\r\n"
             b"Authentication-Results: mx.example.net (forged);\r\n\tdmarc=pass\r\n"
             b"Subject: hi\r\n\r\n")
    stripped = authresults.strip_ours(block, "mx.example.net")
    assert stripped == (b"Received: from x\r\nAuthentication-Results: other.example; spf=fail\r\n"
                        b"Subject: hi\r\n\r\n")
