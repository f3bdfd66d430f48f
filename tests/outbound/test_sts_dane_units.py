"""The parsers and checks of MTA-STS and DANE, without sockets (hypothesis for the parsers)."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhost.outbound import dane
from mailhost.outbound.mtasts import Policy, PolicyError, parse_policy, parse_txt
from mailhost.outbound.security import check_webpki
from mailhost.outbound.tlsrpt import TLSRecord, report
from tests.outbound.testca import TestCA, cert_sha256, policy_text, spki_sha256


def test_parse_policy_and_mx_patterns():
    p = parse_policy("ex.test", policy_text("enforce", "mx1.ex.test", "*.ex.test", max_age=99),
                     "abc", 10.0)
    assert (p.mode, p.mx, p.max_age, p.expires()) == ("enforce", ("mx1.ex.test", "*.ex.test"),
                                                      99, 109.0)
    assert p.allows("MX1.ex.test.") and p.allows("b.ex.test")
    assert not p.allows("a.b.ex.test") and not p.allows("ex.test")
    assert Policy.from_json(p.as_json()) == p


@pytest.mark.parametrize("text, why", [
    ("version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n", "version"),
    ("version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n", "mode"),
    ("version: STSv1\nmode: enforce\nmx: a\nmax_age: soon\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmax_age: 1\n", "mx"),
    ("<html>hello</html>", "colon"),
])
def test_invalid_policies_are_sts_policy_invalid(text, why):
    with pytest.raises(PolicyError) as e:
        parse_policy("ex.test", text, "id", 0.0)
    assert e.value.result_type == "sts-policy-invalid" and why in str(e.value)


def test_parse_txt():
    assert parse_txt((b"v=STSv1; id=20261205T01;",)) == "20261205T01"
    assert parse_txt((b"v=spf1 -all", b"v=STSv1;id=x1")) == "x1"
    assert parse_txt((b"v=STSv1; id=a", b"v=STSv1; id=b")) is None  # two: none (§3.1)
    assert parse_txt((b"v=STSv1; id=bad-id!",)) is None
    assert parse_txt(()) is None


@given(st.text(max_size=400))
def test_parse_policy_never_crashes(text):
    try:
        p = parse_policy("ex.test", text, "id", 0.0)
    except PolicyError as e:
        assert e.result_type == "sts-policy-invalid"
    else:
        assert p.mode in ("enforce", "testing", "none") and 0 <= p.max_age <= 31557600


@given(st.lists(st.binary(max_size=80), max_size=4))
def test_parse_txt_never_crashes(records):
    result = parse_txt(tuple(records))
    assert result is None or result.isalnum()


NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def ca():
    return TestCA()


def test_dane_ee_ignores_names_and_dates(ca):
    cert, _ = ca.issue("other.test", expired=True)
    assert dane.check_chain([cert], [(3, 1, 1, spki_sha256(cert))], "mx.test").ok
    assert dane.check_chain([cert], [(3, 0, 1, cert_sha256(cert))], "mx.test").ok
    r = dane.check_chain([cert], [(3, 1, 1, b"\0" * 32)], "mx.test")
    assert not r.ok and r.result_type == "validation-failure"


def test_dane_ta_checks_chain_name_and_dates(ca):
    ta = [(2, 0, 1, cert_sha256(ca.cert))]
    good, _ = ca.issue("mx.test")
    assert dane.check_chain([good, ca.cert], ta, "mx.test").ok
    assert dane.check_chain([good, ca.cert], ta, "other.test").result_type == \
        "certificate-host-mismatch"
    old, _ = ca.issue("mx.test", expired=True)
    assert dane.check_chain([old, ca.cert], ta, "mx.test").result_type == "certificate-expired"
    stranger, _ = TestCA("another CA").issue("mx.test")
    r = dane.check_chain([stranger, ca.cert], ta, "mx.test")
    assert not r.ok and r.result_type == "validation-failure"


def test_unusable_tlsa_records():
    records = [(0, 0, 1, b""), (1, 1, 1, b""), (3, 2, 1, b""), (2, 1, 3, b""), (3, 1, 2, b"x")]
    assert dane.usable(records) == [(3, 1, 2, b"x")]


def test_webpki_result_types(ca):
    from cryptography.x509.verification import Store

    store = Store([ca.cert])
    good, _ = ca.issue("mx.test")
    assert check_webpki([good, ca.cert], "mx.test", store) is None
    assert check_webpki([good], "other.test", store).result_type == "certificate-host-mismatch"
    old, _ = ca.issue("mx.test", expired=True)
    assert check_webpki([old], "mx.test", store).result_type == "certificate-expired"
    stranger, _ = TestCA("another CA").issue("mx.test")
    assert check_webpki([stranger], "mx.test", store).result_type == "certificate-not-trusted"


def test_report_groups_by_policy(tmp_path):
    import json

    lines = [TLSRecord("a.test", "sts", "success", mx="mx.a.test", when=1.0),
             TLSRecord("a.test", "sts", "success", mx="mx.a.test", when=1.0),
             TLSRecord("a.test", "sts", "certificate-expired", mx="mx.a.test", address="192.0.2.1",
                       detail="expired", when=1.0),
             TLSRecord("b.test", "tlsa", "validation-failure", mx="mx.b.test", when=1.0)]
    (tmp_path / "1970-01-01.jsonl").write_text(
        "".join(json.dumps(r.as_json()) + "\n" for r in lines) + "garbage\n")
    out = report(str(tmp_path), "1970-01-01", "mx.example", "postmaster@example")
    a, b = out["policies"]
    assert a["summary"] == {"total-successful-session-count": 2,
                            "total-failure-session-count": 1}
    assert a["failure-details"][0]["result-type"] == "certificate-expired"
    assert b["policy"]["policy-type"] == "tlsa" and b["summary"]["total-failure-session-count"] == 1
