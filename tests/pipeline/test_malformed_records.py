"""Issue 15: malformed DKIM-Signature, SPF and DMARC records never crash a *stage*.

The checkers have their own hypothesis tests (tests/mailauth/); this one drives the
verification stages together, as SMTP does (``Pipeline.start``, the header
splitter, ``finish``), so a raise anywhere would show as a stage without results
(the pipeline logs and skips a failing stage). Each result is one the RFCs name:
SPF permerror for a syntax error (RFC 7208 §4.6), DKIM permerror for a malformed
signature or key and temperror for a DNS failure (RFC 6376 §6.1.2, §6.1.3),
DMARC none for an unusable record (RFC 7489 §6.6.3) and temperror for a DNS
failure."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.message.stage import HeaderSplitter, MessageContext
from mailhost.pipeline import PipelineSettings, build_pipeline
from mailhost.testing.dns import StaticLookup

SPF_RESULTS = {"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"}

spf_records = st.lists(st.sampled_from(
    ["-all", "ip4:192.0.2.1", "ip4:", "a:%{", "include:", "redirect=a.test", "mx/99", "foo",
     "exists:%{i}.x.test", "ip6:zz", "?all", "v=spf1", "%%", "ptr:"]), max_size=6).map(
    lambda terms: "v=spf1 " + " ".join(terms)) | st.text(max_size=40)
dmarc_records = st.lists(st.sampled_from(
    ["v=DMARC1", "p=reject", "p=", "p=bogus", "sp=x", "pct=x", "adkim=q", "rua=mailto:", "=", ""]),
    max_size=6).map("; ".join) | st.text(max_size=40)
tag_values = st.text(st.sampled_from("abcd=;:/+ .019rsaDKIM\t-"), max_size=20)
signatures = st.dictionaries(st.sampled_from(["v", "a", "b", "bh", "c", "d", "h", "l", "s", "t"]),
                             tag_values, max_size=10).map(
    lambda tags: "; ".join(f"{k}={v}" for k, v in tags.items()))
key_records = st.sampled_from(["v=DKIM1; k=rsa; p=", "v=DKIM1; p=MFww", "garbage", "k=ed25519; p=A",
                               "v=DKIM1; k=rsa; s=other; p=MFww"]) | st.text(max_size=30)
faults = st.sets(st.sampled_from(["a.test", "_dmarc.a.test", "s._domainkey.a.test"]), max_size=3)


@settings(max_examples=200, deadline=None)
@given(spf=spf_records, dmarc=dmarc_records, signature=signatures, key=key_records, down=faults)
def test_malformed_records_never_crash_a_stage(tmp_path_factory, spf, dmarc, signature, key, down):
    lookup = StaticLookup({"a.test": {"TXT": [spf]}, "_dmarc.a.test": {"TXT": [dmarc]},
                           "s._domainkey.a.test": {"TXT": [key]}})
    for name in down:
        lookup.faults[name] = "timeout"
    pipeline = build_pipeline(PipelineSettings(
        stages=("spf", "dkim", "dmarc", "auth_results"), authserv_id="mx.b.test",
        spool_dir=str(tmp_path_factory.getbasetemp() / "spool")), lookup)
    ctx = pipeline.start(MessageContext("192.0.2.1", "client.a.test", "alice@a.test",
                                        recipients=["bob@b.test"]))
    splitter = HeaderSplitter(pipeline, ctx)
    splitter.feed(f"DKIM-Signature: {signature}\r\n".encode("utf-8", "replace")
                  + b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: x\r\n\r\nHi.\r\n")
    splitter.close()
    verdicts = []
    pipeline.finish(ctx).addBoth(verdicts.append)
    assert verdicts and verdicts[0].action in ("accept", "reject", "quarantine"), verdicts
    assert {"spf", "dkim", "dmarc"} <= ctx.results.keys(), ctx.results  # no stage raised
    (mailfrom,) = [r for r in ctx.results["spf"] if r.identity == "mailfrom"]
    assert mailfrom.result in SPF_RESULTS
    if "a.test" in down:
        assert mailfrom.result == "temperror"
    elif spf.startswith("v=spf1 ") and any(t in spf.split() for t in ("ip4:", "a:%{", "foo")):
        assert mailfrom.result == "permerror"  # a syntax error anywhere (RFC 7208 §4.6)
    (dkim,) = ctx.results["dkim"]
    assert dkim.result in ("permerror", "temperror", "fail"), dkim
    dmarc_result = ctx.results["dmarc"]
    assert dmarc_result.result in ("none", "fail", "temperror", "pass")
    if "_dmarc.a.test" in down:
        assert dmarc_result.result == "temperror"
    elif "v=DMARC1" not in dmarc:
        assert dmarc_result.result == "none"
    if verdicts[0].action != "reject":  # (a DMARC reject ends the run before it)
        assert ctx.prepended.startswith(b"Authentication-Results: mx.b.test;")
