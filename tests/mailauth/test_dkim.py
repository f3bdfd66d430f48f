"""DKIM signing and verification against DNS served on loopback."""

from __future__ import annotations

import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from mailhost.mailauth.dkim import DKIMSigner, DKIMVerifier
from mailhost.testing.dns import StaticLookup
from tests.mailauth.conftest import publish

MESSAGE = (b"From: Alice <alice@example.test>\r\n"
           b"To: bob@example.net\r\n"
           b"Subject: hello  there\r\n"
           b"Date: Fri, 04 Dec 2026 23:00:00 +0000\r\n"
           b"Message-ID: <1@example.test>\r\n"
           b"\r\n"
           b"Hello Bob,\r\n\r\nsee you.\r\n")


def signed(keys, message=MESSAGE):
    return DKIMSigner(keys).sign(message, "example.test") + message


@pytest_twisted.ensureDeferred
async def test_dual_signature_passes(dns_server, lookup, rsa_key, ed_key):
    publish(dns_server, rsa_key, ed_key)
    message = signed([ed_key, rsa_key])
    assert message.count(b"DKIM-Signature:") == 2
    results = await DKIMVerifier(lookup).verify(message)
    assert [(r.result, r.algorithm, r.selector) for r in results] == [
        ("pass", "ed25519-sha256", "ed1"), ("pass", "rsa-sha256", "rsa1")]
    assert results[1].key_bits == 2048 and results[0].domain == "example.test"


def test_relaxed_and_from_oversigned(rsa_key):
    header = DKIMSigner([rsa_key]).sign(MESSAGE, "example.test")
    unfolded = b" ".join(header.split())
    assert b"c=relaxed/relaxed" in unfolded
    h = unfolded.split(b" h=")[1].split(b";")[0].replace(b" ", b"").split(b":")
    assert h.count(b"from") == 2 and b"subject" in h


@pytest_twisted.ensureDeferred
async def test_changed_body_fails(dns_server, lookup, rsa_key, ed_key):
    publish(dns_server, rsa_key, ed_key)
    message = signed([ed_key, rsa_key]).replace(b"see you.", b"send money.")
    results = await DKIMVerifier(lookup).verify(message)
    assert [r.result for r in results] == ["fail", "fail"]
    assert "body hash" in results[0].reason


@pytest_twisted.ensureDeferred
async def test_changed_header_and_added_from_fail(dns_server, lookup, rsa_key):
    publish(dns_server, rsa_key)
    message = signed([rsa_key])
    changed = message.replace(b"Subject: hello  there", b"Subject: hello world")
    assert [r.result for r in await DKIMVerifier(lookup).verify(changed)] == ["fail"]
    second_from = message.replace(b"\r\n\r\nHello", b"\r\nFrom: ceo@example.test\r\n\r\nHello")
    assert [r.result for r in await DKIMVerifier(lookup).verify(second_from)] == ["fail"]


@pytest_twisted.ensureDeferred
async def test_relaxed_survives_rewrapping(dns_server, lookup, rsa_key):
    publish(dns_server, rsa_key)
    message = signed([rsa_key]).replace(b"Subject: hello  there", b"subject:  hello\r\n  there")
    message = message.replace(b"see you.", b"see    you.   ")
    assert [r.result for r in await DKIMVerifier(lookup).verify(message)] == ["pass"]


@pytest_twisted.ensureDeferred
async def test_key_problems(dns_server, lookup, rsa_key):
    message = signed([rsa_key])
    verifier = DKIMVerifier(lookup)
    [r] = await verifier.verify(message)  # not published
    assert r.result == "permerror" and r.reason == "no key"
    dns_server.zones["rsa1._domainkey.example.test"] = {"TXT": ["v=DKIM1; k=rsa; p=!!!"]}
    [r] = await verifier.verify(message)
    assert r.result == "permerror"
    dns_server.faults["rsa1._domainkey.example.test"] = "servfail"
    [r] = await verifier.verify(message)
    assert r.result == "temperror"


@pytest_twisted.ensureDeferred
async def test_unsigned_message(lookup):
    assert await DKIMVerifier(lookup).verify(MESSAGE) == []


@pytest_twisted.ensureDeferred
async def test_streamed_in_chunks(dns_server, lookup, rsa_key):
    """A body fed in small chunks signs and verifies like a whole one."""
    publish(dns_server, rsa_key)
    body = b"".join(b"line %d  with   blanks \r\n" % i for i in range(2000))
    head = MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    signing = DKIMSigner([rsa_key]).start(head, "example.test")
    for i in range(0, len(body), 777):
        signing.update(body[i:i + 777])
    message = signing.finish() + head + body
    verification = DKIMVerifier(lookup).start(signing.finish() + head)
    for i in range(0, len(body), 1000):
        verification.update(body[i:i + 1000])
    assert [r.result for r in await verification.finish()] == ["pass"]
    assert [r.result for r in await DKIMVerifier(lookup).verify(message)] == ["pass"]


tag_values = st.text(st.sampled_from("abcdefgh=;:/+ .0123456789rsaDKIM\t-"), max_size=30)
signature_tags = st.dictionaries(st.sampled_from(["v", "a", "b", "bh", "c", "d", "h", "i", "l", "q",
                                                  "s", "t", "x", "z", ""]), tag_values, max_size=12)


@settings(max_examples=300, deadline=None)
@given(tags=signature_tags, raw=st.binary(max_size=60), key=st.sampled_from(
    ["v=DKIM1; k=rsa; p=", "v=DKIM1; p=MFww", "garbage", "v=DKIM1; k=ed25519; p=AAAA", "k=foo"]))
def test_malformed_signatures_never_crash(tags, raw, key):
    """Every malformed DKIM-Signature ends as permerror or fail, never as an exception."""
    lookup = StaticLookup({"s._domainkey.example.test": {"TXT": [key]}})
    value = "; ".join(f"{k}={v}" for k, v in tags.items()).encode()
    messages = [b"DKIM-Signature: " + value + b"\r\n" + MESSAGE,
                b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=s; h=from; bh=" + raw
                + b"; b=" + raw + b"\r\n" + MESSAGE,
                b"DKIM-Signature:" + raw.replace(b"\n", b"") + b"\r\n" + MESSAGE]
    for message in messages:
        d = Deferred.fromCoroutine(DKIMVerifier(lookup).verify(message))
        results = []
        d.addCallback(results.extend)
        assert results and all(r.result in ("permerror", "fail") for r in results), results

