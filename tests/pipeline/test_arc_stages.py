"""The ``arc`` and ``arc_seal`` stages, their settings, and alias forwarding, without
sockets (``StaticLookup``)."""

from __future__ import annotations

import os

import pytest
import pytest_twisted

from mailhost.auth.directory import UserDirectory
from mailhost.mailauth.dkim_keys import generate_pem, write_key
from mailhost.message.stage import ACCEPT, MessageContext
from mailhost.pipeline import PipelineConfigError, build_pipeline
from mailhost.smtp.params import Address, RcptParams
from mailhost.smtp.policy import RecipientPolicy
from mailhost.smtp.reply import Reply
from mailhost.testing.dns import StaticLookup
from tests.pipeline.test_stages import ARC_KEY, KEY, MESSAGE, ZONES, run, settings

ORDER = ["spf", "dkim", "dmarc", "arc", "auth_results", "arc_seal"]
LOOKUP_ZONES = dict(ZONES, **{"arc1._domainkey.b.test": {"TXT": [ARC_KEY.public_record]}})


@pytest.mark.parametrize("stages, error", [
    (["arc_seal", "arc"], "'arc' must come before 'arc_seal'"),
    (["arc", "arc_seal", "auth_results"], "'auth_results' must come before 'arc_seal'"),
    (["spf", "arc_seal"], "'arc_seal' needs 'arc'"),
    (["auth_results", "arc"], "'auth_results' must come after arc"),
])
def test_bad_arc_orders_name_the_key(stages, error):
    with pytest.raises(PipelineConfigError, match=error):
        settings(stages=stages)


def test_arc_selector_is_domain_colon_selector_and_needs_an_rsa_key(tmp_path):
    with pytest.raises(PipelineConfigError, match="pipeline.arc_selector"):
        settings(stages=ORDER, arc_selector="b.test")
    s = settings(stages=ORDER, arc_selector="B.test.:arc1")
    assert s.arc_selector == ("b.test", "arc1")
    with pytest.raises(PipelineConfigError, match="arc1"):
        s.arc_key()  # no key file
    folder = tmp_path / "dkim" / "b.test"
    os.makedirs(folder)
    write_key(str(folder / "arc1.pem"), ARC_KEY.private)
    write_key(str(folder / "ed.pem"), generate_pem("ed25519"))
    from dataclasses import replace

    assert replace(s, dkim_dir=str(tmp_path / "dkim")).arc_key().selector == "arc1"
    ed_only = replace(settings(stages=ORDER, dkim_selectors={"b.test": "ed"}),
                      dkim_dir=str(tmp_path / "dkim"))
    with pytest.raises(PipelineConfigError, match="needs an RSA key"):
        ed_only.arc_key()
    both = replace(settings(stages=ORDER, dkim_selectors={"b.test": "ed arc1"}),
                   dkim_dir=str(tmp_path / "dkim"))
    assert both.arc_key().selector == "arc1"


def pipeline():
    return build_pipeline(settings(stages=ORDER), StaticLookup(LOOKUP_ZONES), keys=[KEY],
                          arc_key=ARC_KEY)


@pytest_twisted.ensureDeferred
async def test_forwarded_message_is_sealed_and_the_seal_verifies():
    p = pipeline()
    ctx = MessageContext("192.0.2.1", "mx.a.test", "alice@a.test", forwarded=["carol@c.test"])
    assert await run(p, ctx, MESSAGE) == ACCEPT
    head = ctx.prepended
    assert head.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=b.test; s=arc1")
    assert b"ARC-Authentication-Results: i=1; mx.b.test;" in head
    assert b"arc=none" in head and b"spf=pass" in head
    # The next hop (a pipeline of its own) verifies what we pass on.
    body = MESSAGE.split(b"\r\n\r\n", 1)[1]
    sealed = head + ctx.header_block + body
    # (From the address a.test's SPF names: from any other, DMARC's p=reject refuses
    # the unsigned message before ``arc`` is asked.)
    nxt = MessageContext("192.0.2.1", "mx.b.test", "alice@a.test")
    await run(pipeline(), nxt, sealed)
    assert nxt.results["arc"].result == "pass" and nxt.results["arc"].domain == "b.test"
    assert b"arc=pass (i=1 sealed by b.test)" in nxt.prepended


@pytest_twisted.ensureDeferred
async def test_dmarc_fail_of_mail_a_trusted_sealer_vouches_for_is_not_enforced():
    """Sealed at b.test after DMARC passed there (SPF from 192.0.2.1), then received
    from an address a.test's SPF does not name, unsigned: DMARC fails, p=reject. A
    receiver that trusts b.test's seals accepts it; one that does not refuses it."""
    ctx = MessageContext("192.0.2.1", "mx.a.test", "alice@a.test", forwarded=["c@c.test"])
    await run(pipeline(), ctx, MESSAGE)
    sealed = ctx.prepended + ctx.header_block + MESSAGE.split(b"\r\n\r\n", 1)[1]
    order = ["spf", "dkim", "arc", "dmarc", "auth_results"]
    lookup = StaticLookup(LOOKUP_ZONES)
    strict = build_pipeline(settings(stages=order, authserv_id="mx.c.test"), lookup)
    refused = await run(strict, MessageContext("192.0.2.2", "mx.b.test", "alice@a.test"), sealed)
    assert refused.action == "reject"
    trusting = build_pipeline(settings(stages=order, authserv_id="mx.c.test",
                                       arc_trusted_sealers=["B.test"]), lookup)
    nxt = MessageContext("192.0.2.2", "mx.b.test", "alice@a.test")
    assert await run(trusting, nxt, sealed) == ACCEPT
    dmarc = nxt.results["dmarc"]
    assert dmarc.result == "fail" and dmarc.disposition == "none"
    assert "trusted ARC sealer b.test" in dmarc.reason
    # A sealer not on the list vouches for nothing.
    other = build_pipeline(settings(stages=order, authserv_id="mx.c.test",
                                    arc_trusted_sealers=["x.test"]), lookup)
    refused = await run(other, MessageContext("192.0.2.2", "mx.b.test", "alice@a.test"), sealed)
    assert refused.action == "reject"


def test_trusted_sealers_need_arc_before_dmarc():
    with pytest.raises(PipelineConfigError, match="'arc' must come before 'dmarc'"):
        settings(stages=["spf", "dkim", "dmarc", "arc"], arc_trusted_sealers=["b.test"])


@pytest_twisted.ensureDeferred
async def test_not_forwarded_or_authenticated_is_not_sealed():
    plain = MessageContext("192.0.2.1", "mx.a.test", "alice@a.test")
    await run(pipeline(), plain, MESSAGE)
    assert b"ARC-Seal" not in plain.prepended and plain.results["arc"].result == "none"
    user = MessageContext("192.0.2.1", "mx.a.test", "alice@a.test", user="alice@a.test",
                          forwarded=["carol@c.test"])
    await run(pipeline(), user, MESSAGE)
    assert b"ARC-Seal" not in user.prepended and "arc" not in user.results


def test_alias_targets_in_other_domains_are_forwards():
    d = UserDirectory.in_memory(["b.test"], {"bob@b.test": "pw"},
                                {"fwd@b.test": ["carol@c.test", "bob@b.test", "list@b.test"],
                                 "list@b.test": ["dave@d.test", "carol@c.test"]})
    assert d.lookup("fwd@b.test") == ["bob@b.test"]
    assert d.forwards("fwd@b.test") == ["carol@c.test", "dave@d.test"]
    assert d.forwards("bob@b.test") == [] and d.forwards("carol@c.test") == []


def test_policy_forwards_only_with_a_queue():
    d = UserDirectory.in_memory(["b.test"], {"bob@b.test": "pw"}, {"fwd@b.test": ["carol@c.test"]})
    rcpt = Address("fwd", "b.test")
    queued = RecipientPolicy(d, (), can_queue=True, default_domain="b.test")
    decision = queued.decide(rcpt, RcptParams(), "192.0.2.1", None)
    assert decision.forwards == ("carol@c.test",) and decision.mailboxes == ()
    unqueued = RecipientPolicy(d, (), can_queue=False, default_domain="b.test")
    with pytest.raises(Reply) as e:
        unqueued.decide(rcpt, RcptParams(), "192.0.2.1", None)
    assert e.value.code == 550


