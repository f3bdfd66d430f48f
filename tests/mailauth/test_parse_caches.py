"""The parses kept between messages (DKIM keys, SPF and DMARC records, by record
text) and the cheap paths of the verification stages: a checker reused across
messages answers exactly as a fresh one, hostile records never crash a stage
(permerror / temperror as the RFCs say), and a changed record is parsed anew."""

from __future__ import annotations

import email.utils

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from mailhost.mailauth.authresults import strip_ours
from mailhost.mailauth.dkim import DKIMSigner, DKIMVerifier
from mailhost.mailauth.dmarc import DMARCChecker, from_domain
from mailhost.mailauth.spf import SPFChecker, SPFResult
from mailhost.testing.dns import StaticLookup

MESSAGE = (b"From: Alice <alice@example.test>\r\n"
           b"To: bob@example.net\r\n"
           b"Subject: caches\r\n"
           b"\r\n"
           b"Hello.\r\n")


def run(coroutine):
    out = []
    Deferred.fromCoroutine(coroutine).addBoth(out.append)
    assert out, "StaticLookup answers at once"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


key_texts = st.text(st.sampled_from("v=DKIM1;k=rsaed25519p+/AZaz09 \t-sh*"), max_size=60) | \
    st.sampled_from(["v=DKIM1; k=rsa; p=", "v=DKIM1; p=MFww", "v=DKIM1; k=ed25519; p=AAAA",
                     "v=DKIM1; k=rsa; s=tlsrpt; p=MFww", "v=DKIM1; k=rsa; s=other; p=MFww",
                     "v=DKIM2; p=MFww", "k=foo", "p"])
SHARED_DKIM = DKIMVerifier(StaticLookup())  # its key cache lives across the examples


@settings(max_examples=300, deadline=None)
@given(key=key_texts, fault=st.booleans())
def test_hostile_key_records_are_permerror_or_temperror_with_a_shared_cache(rsa_key, key, fault):
    lookup = StaticLookup({"rsa1._domainkey.example.test": {"TXT": [key]}})
    if fault:
        lookup.faults["rsa1._domainkey.example.test"] = "timeout"
    SHARED_DKIM.lookup = lookup
    message = DKIMSigner([rsa_key]).sign(MESSAGE, "example.test") + MESSAGE
    for _ in range(2):  # the second time from the cache, same answer
        (result,) = run(SHARED_DKIM.verify(message))
        assert result.result == ("temperror" if fault else "permerror"), (key, result)


def test_a_rotated_key_record_is_parsed_anew(rsa_key):
    from mailhost.mailauth.dkim_keys import generate_pem, key_from_pem

    other = key_from_pem("example.test", "rsa1", generate_pem("rsa"))
    lookup = StaticLookup({"rsa1._domainkey.example.test": {"TXT": [rsa_key.public_record]}})
    verifier = DKIMVerifier(lookup)
    old = DKIMSigner([rsa_key]).sign(MESSAGE, "example.test") + MESSAGE
    new = DKIMSigner([other]).sign(MESSAGE, "example.test") + MESSAGE
    assert [r.result for r in run(verifier.verify(old))] == ["pass"]
    lookup.zones["rsa1._domainkey.example.test"] = {"TXT": [other.public_record]}
    assert [r.result for r in run(verifier.verify(old))] == ["fail"]
    assert [r.result for r in run(verifier.verify(new))] == ["pass"]


def test_unsigned_fields_around_the_signed_ones_change_nothing(rsa_key):
    """Only the fields h= names are canonicalized; Received fields on top, a second
    Subject below the signature's view, and so on do not change what is hashed."""
    lookup = StaticLookup({"rsa1._domainkey.example.test": {"TXT": [rsa_key.public_record]}})
    signature = DKIMSigner([rsa_key]).sign(MESSAGE, "example.test")
    received = b"".join(b"Received: from hop%d by x.test;\r\n  Fri, 4 Dec 2026\r\n" % i
                        for i in range(30))
    message = received + signature + b"X-Later:  folded\r\n\tvalue\r\n" + MESSAGE
    assert [r.result for r in run(DKIMVerifier(lookup).verify(message))] == ["pass"]
    tampered = message.replace(b"Subject: caches", b"Subject: cached")
    assert [r.result for r in run(DKIMVerifier(lookup).verify(tampered))] == ["fail"]


spf_terms = st.sampled_from(["a", "mx", "-all", "~all", "ip4:192.0.2.0/24", "ip6:2001:db8::/32",
                             "ip4:192.0.2.1", "ip4:10.0.0.0/8", "include:i.test", "redirect=i.test",
                             "ip4:", "ip4:1.2.3.4/33", "%{", "foo", "exp=e.test", "+all"])
SHARED_SPF = SPFChecker(StaticLookup())


@settings(max_examples=300, deadline=None)
@given(record=st.lists(spf_terms, max_size=6).map(lambda t: "v=spf1 " + " ".join(t)),
       ip=st.sampled_from(["192.0.2.1", "2001:db8::1", "10.0.0.1"]), fault=st.booleans())
def test_a_reused_spf_checker_answers_as_a_fresh_one(record, ip, fault):
    lookup = StaticLookup({"bad.test": {"TXT": [record], "A": ["192.0.2.1"]},
                           "i.test": {"TXT": ["v=spf1 ip4:10.0.0.0/8 ?all"]}})
    if fault:
        lookup.faults["i.test"] = "servfail"
    SHARED_SPF.lookup = lookup
    fresh = run(SPFChecker(lookup).check_mail_from(ip, "a@bad.test", "h.test"))
    for _ in range(2):
        assert run(SHARED_SPF.check_mail_from(ip, "a@bad.test", "h.test")) == fresh
    assert fresh.result in ("neutral", "pass", "fail", "softfail", "temperror", "permerror")


SHARED_DMARC = DMARCChecker(StaticLookup())


@settings(max_examples=300, deadline=None)
@given(record=st.lists(st.sampled_from(
    ["v=DMARC1", "p=reject", "p=", "sp=quarantine", "pct=x", "adkim=s", "aspf=s", "p=none",
     "rua=mailto:a", "v=DMARC2", "=", " "]), max_size=6).map("; ".join), fault=st.booleans())
def test_a_reused_dmarc_checker_answers_as_a_fresh_one(record, fault):
    lookup = StaticLookup({"_dmarc.example.test": {"TXT": [record]}})
    if fault:
        lookup.faults["_dmarc.example.test"] = "timeout"
    SHARED_DMARC.lookup = lookup
    spf = SPFResult("fail", "x.test", "mailfrom")
    fresh = run(DMARCChecker(lookup, rng=lambda: 0.0).check("example.test", spf, []))
    SHARED_DMARC.rng = lambda: 0.0
    for _ in range(2):
        assert run(SHARED_DMARC.check("example.test", spf, [])) == fresh
    assert fresh.result == ("temperror" if fault else fresh.result)
    assert fresh.result in ("none", "fail", "temperror")


local = st.text(st.sampled_from("abcXYZ09._%+=&'/!#$*?^`{|}~-"), min_size=1, max_size=12)
domain = st.text(st.sampled_from("abcxyz09.-"), min_size=1, max_size=12)
phrase = st.text(st.sampled_from("abc XYZ.'_-09"), max_size=15)


@settings(max_examples=500, deadline=None)
@given(local=local, domain=domain, phrase=phrase, angle=st.booleans())
def test_from_domain_fast_path_agrees_with_getaddresses(local, domain, phrase, angle):
    value = f"{phrase} <{local}@{domain}>" if angle else f"{local}@{domain}"
    found = [a for _n, a in email.utils.getaddresses([value]) if a]
    expected = None
    if len(found) == 1:
        _l, at, d = found[0].rpartition("@")
        d = d.strip().rstrip(".").lower()
        import re

        if at and d and re.fullmatch(r"[a-z0-9._-]+", d) and ".." not in d:
            expected = d
    assert from_domain(f"From: {value}\r\nTo: x@y.test\r\n\r\n".encode()) == expected


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from([b";", b" ", b"\r", b"\n", b"b", b"=", b"A", b"/", b"x", b"\t",
                                 b"\r\n", b"; b=", b" b =", b"!", b"+"]), max_size=30).map(b"".join))
def test_our_btag_pattern_blanks_what_dkimpys_does(value):
    import dkim

    from mailhost.mailauth.dkim import RE_BTAG

    assert RE_BTAG.sub(b"\\1", value) == dkim.RE_BTAG.sub(b"\\1", value)


def test_strip_ours_without_any_authentication_results_is_the_block_itself():
    block = b"From: a@b.test\r\nSubject: x\r\n\r\n"
    assert strip_ours(block, "mx.test") is block
    forged = b"Authentication-Results: MX.test; dkim=pass\r\n" + block
    assert strip_ours(forged, "mx.test") == block
