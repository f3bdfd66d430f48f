"""ARC (RFC 8617): sealing and verifying chains against DNS served on loopback, and
dkimpy's own signer and ``arcverify`` command as the independent other side."""

from __future__ import annotations

import json
import subprocess
import sys

import dkim
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from mailhost.mailauth.arc import ARCSealer, ARCVerifier
from mailhost.mailauth.dkim_body import split_header_block
from mailhost.mailauth.dkim_keys import generate_pem, key_from_pem
from mailhost.testing.dns import StaticLookup
from tests.mailauth.conftest import publish

MESSAGE = (b"From: Alice <alice@example.test>\r\n"
           b"To: list@forwarder.test\r\n"
           b"Subject: hello  there\r\n"
           b"Date: Fri, 04 Dec 2026 23:00:00 +0000\r\n"
           b"Message-ID: <1@example.test>\r\n"
           b"\r\n"
           b"Hello Bob,\r\n\r\nsee you.\r\n")
RESULTS = b"spf=pass smtp.mailfrom=alice@example.test;\r\n\tdkim=none"


def sealed(key, message=MESSAGE, cv="none", authserv_id="mx.example.test",
           results=RESULTS, chunk=7):
    """``message`` with our ARC set on top (the body fed in ``chunk``-octet pieces)."""
    head, body = split_header_block(message)
    sealing = ARCSealer(key, clock=lambda: 1796000000).start()
    for i in range(0, len(body), chunk):
        sealing.update(body[i:i + chunk])
    return sealing.finish(head, authserv_id, results, cv) + message


def arcverify_cli(message: bytes, records: dict[str, str]) -> str:
    """dkimpy's ``arcverify`` command (its ``main``, not our wrapper) on ``message``,
    its DNS answered from ``records`` instead of a resolver."""
    script = ("import json, sys, dkim.dnsplug\n"
              "records = json.loads(sys.argv[1])\n"
              "dkim.dnsplug._get_txt = lambda name, timeout=5: "
              "records.get(name.rstrip('.').lower())\n"
              "from dkim.arcverify import main\n"
              "main()\n")
    out = subprocess.run([sys.executable, "-c", script, json.dumps(records)], input=message,
                         capture_output=True, timeout=60, check=True)
    return out.stdout.decode()


def records_of(*keys) -> dict[str, str]:
    return {f"{k.selector}._domainkey.{k.domain}": k.public_record for k in keys}


@pytest_twisted.ensureDeferred
async def test_one_seal_passes_ours_and_dkimpys_arcverify(dns_server, lookup, rsa_key):
    publish(dns_server, rsa_key)
    message = sealed(rsa_key)
    assert message.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=example.test")
    result = await ARCVerifier(lookup).verify(message)
    assert (result.result, result.instances, result.domain, result.oldest_pass) == (
        "pass", 1, "example.test", 0)
    assert "cv=b'pass' success" in arcverify_cli(message, records_of(rsa_key))


@pytest_twisted.ensureDeferred
async def test_two_hops_pass_and_the_second_seal_says_cv_pass(dns_server, lookup, rsa_key):
    second = key_from_pem("forwarder.test", "arc1", generate_pem("rsa"))
    publish(dns_server, rsa_key, second)
    message = sealed(second, sealed(rsa_key), cv="pass", authserv_id="mx.forwarder.test")
    assert b"ARC-Seal: i=2; cv=pass" in message
    result = await ARCVerifier(lookup).verify(message)
    assert (result.result, result.instances, result.domain) == ("pass", 2, "forwarder.test")
    assert "cv=b'pass'" in arcverify_cli(message, records_of(rsa_key, second))


@pytest_twisted.ensureDeferred
async def test_we_verify_dkimpys_own_seal(dns_server, lookup, rsa_key):
    publish(dns_server, rsa_key)
    message = b"Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=a@example.test\r\n" \
        + MESSAGE
    head = b"".join(dkim.arc_sign(message, b"rsa1", b"example.test", rsa_key.private,
                                  b"mx.example.test"))
    result = await ARCVerifier(lookup).verify(head + message)
    assert result.result == "pass" and result.instances == 1


@pytest_twisted.ensureDeferred
async def test_changed_body_and_tampered_seal_fail(dns_server, lookup, rsa_key):
    publish(dns_server, rsa_key)
    message = sealed(rsa_key)
    changed = message.replace(b"see you.", b"send money.")
    result = await ARCVerifier(lookup).verify(changed)
    assert result.result == "fail" and "ARC-Message-Signature" in result.reason
    tampered = message.replace(b"cv=none", b"cv=pass", 1)
    assert (await ARCVerifier(lookup).verify(tampered)).result == "fail"
    assert "cv=b'fail'" in arcverify_cli(changed, records_of(rsa_key))


@pytest_twisted.ensureDeferred
async def test_no_chain_is_none_and_a_missing_key_fails(dns_server, lookup, rsa_key):
    assert (await ARCVerifier(lookup).verify(MESSAGE)).result == "none"
    stranger = key_from_pem("nokey.test", "s", rsa_key.private)
    result = await ARCVerifier(lookup).verify(sealed(stranger))
    assert result.result == "fail"


@pytest_twisted.ensureDeferred
async def test_instance_above_50_fails_before_dkimpy(lookup):
    fields = b"ARC-Seal: i=51; cv=pass; a=rsa-sha256; d=x.test; s=s; b=AAAA\r\n"
    result = await ARCVerifier(lookup).verify(fields + MESSAGE)
    assert result.result == "fail" and "1..50" in result.reason
    many = b"".join(b"ARC-Seal: i=1; cv=none; d=x.test; s=s; b=AA\r\n" for _ in range(151))
    assert (await ARCVerifier(lookup).verify(many + MESSAGE)).result == "fail"


def test_no_seal_beyond_instance_50(rsa_key):
    chain = b"".join(b"ARC-Seal: i=%d; cv=pass; a=rsa-sha256; d=x.test; s=s; b=AA\r\n" % i
                     for i in range(1, 51))
    head, _body = split_header_block(chain + MESSAGE)
    assert ARCSealer(rsa_key).start().finish(head, "mx", b"arc=pass", "pass") == b""


_names = st.sampled_from([b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results",
                          b"arc-seal"])
_values = st.one_of(
    st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b" ")),
    st.lists(st.tuples(st.sampled_from([b"i", b"cv", b"a", b"b", b"bh", b"d", b"s", b"h", b"c",
                                        b"l", b"t"]),
                       st.sampled_from([b"1", b"2", b"50", b"0", b"-1", b"none", b"pass",
                                        b"rsa-sha256", b"ed25519-sha256", b"relaxed/simple",
                                        b"x.test", b"AAAA", b"from:to", b"", b"99999999999"])),
             max_size=9).map(lambda kv: b"; ".join(k + b"=" + v for k, v in kv)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_names, _values), min_size=1, max_size=8))
def test_malformed_arc_fields_fail_never_crash(fields):
    lookup = StaticLookup({"s._domainkey.x.test": {"TXT": [b"v=DKIM1; p=AAAA"]},
                           "1._domainkey.x.test": {"TXT": [b"v=DKIM1; k=rsa; p="]}})
    head = b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    d = Deferred.fromCoroutine(ARCVerifier(lookup).verify(head + MESSAGE))
    results = []
    d.addCallback(results.append)
    assert len(results) == 1, "the verification waited on nothing but the static lookup"
    assert results[0].result in ("fail", "none")
