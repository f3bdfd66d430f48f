"""ARC end to end (issue 15, RFC 8617): three mail hosts, an alias on B forwarding to C.

A (127.0.0.1, a.test) signs alice's mail and relays it to B (127.0.0.2, b.test),
where ``fwd@b.test`` is an alias of ``carol@c.test``; B verifies, seals (its
``arc_seal`` stage, key ``pipeline.arc_selector``) and its queue forwards the message
to C (127.0.0.3, c.test), which verifies the chain. Whole ``makeService`` hosts with
real listeners and queues, and one in-process authoritative DNS server, as in
``test_pipeline.py``. dkimpy's ``arcverify`` command checks what C received.
"""

from __future__ import annotations

import email.policy
import re
import smtplib

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.internet.defer import Deferred

from mailhost.auth.directory import UserDirectory
from mailhost.milter import protocol as p
from tests.e2e.test_pipeline import Host, message, ours, send, wait_for
from tests.mailauth.test_arc import arcverify_cli
from tests.milter import scripted

B_STAGES = ["spf", "dkim", "dmarc", "arc", "auth_results", "dkim_sign", "arc_seal"]
C_STAGES = ["spf", "dkim", "arc", "dmarc", "auth_results"]


async def raw(host: Host, user: str) -> list[bytes]:
    account = await host.store.open_account(user)
    folder = await account.open_folder("INBOX")
    out = []
    for info in folder.messages():
        f = await folder.open_message(info.uid)
        out.append(f.read())
        f.close()
    return out


def as_received(stored: bytes) -> bytes:
    """The message as C's SMTP server received it: without what C put on top
    (Return-Path, its Authentication-Results and Received), i.e. from B's ARC set on."""
    start = stored.find(b"ARC-Seal:")
    assert start > 0
    return stored[start:]


@pytest.fixture
def three(tmp_path, dns_server, request):
    """A, B, C and the DNS keys. ``request.param`` (optional): ``trusted``, the ARC
    sealers C trusts; ``milter``, a script for a scripted milter in B's pipeline."""
    param = getattr(request, "param", {})
    dns = dns_server.address
    a = Host(tmp_path, "a", "127.0.0.1", "a.test", {"alice@a.test": "pw"}, dns,
             selectors={"a.test": "r1"})
    b = Host(tmp_path, "b", "127.0.0.2", "b.test", {"bob@b.test": "pw"}, dns)
    c = Host(tmp_path, "c", "127.0.0.3", "c.test", {"carol@c.test": "pw"}, dns)
    b.directory = UserDirectory.in_memory(["b.test"], {"bob@b.test": "pw"},
                                          {"fwd@b.test": ["carol@c.test"],
                                           "both@b.test": ["bob@b.test", "carol@c.test"]})
    a.config.outbound.smarthost = f"127.0.0.2:{b.port}"
    b.config.outbound.smarthost = f"127.0.0.3:{c.port}"
    b.config.outbound.source_address = b.ip  # B's mail to C leaves from B's address (SPF)
    b.config.pipeline.stages = list(B_STAGES)
    b.config.pipeline.arc_selector = "b.test:arc1"
    c.config.pipeline.stages = list(C_STAGES)
    c.config.pipeline.arc_trusted_sealers = list(param.get("trusted", ()))
    milter = None
    if "milter" in param:
        milter = pytest_twisted.blockon(scripted.start(
            param["milter"], options=p.Options(6, p.F_ADDRCPT | p.F_DELRCPT, 0)))
        b.config.pipeline.milters = {"m": f"inet:{milter.port}@127.0.0.1"}
        b.config.pipeline.stages = B_STAGES[:-2] + ["milter"] + B_STAGES[-2:]
    rsa_record = a.add_key("r1", "rsa")
    b_record = b.add_key("arc1", "rsa")
    dns_server.zones.update({
        "a.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "mx.a.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"], "A": ["127.0.0.1"]},
        "_dmarc.a.test": {"TXT": ["v=DMARC1; p=reject"]},
        "r1._domainkey.a.test": {"TXT": [rsa_record]},
        "arc1._domainkey.b.test": {"TXT": [b_record]},
    })
    hosts = (a, b, c)
    for host in hosts:
        pytest_twisted.blockon(Deferred.fromCoroutine(host.start()))
    yield a, b, c, {"arc1._domainkey.b.test": b_record, "r1._domainkey.a.test": rsa_record}
    for host in hosts:
        pytest_twisted.blockon(Deferred.fromCoroutine(host.stop()))
    if milter is not None:
        pytest_twisted.blockon(Deferred.fromCoroutine(milter.stop()))


async def forward_one(a: Host, c: Host, subject: str, to: str = "fwd@b.test") -> bytes:
    await threads.deferToThread(
        send, a, "alice@a.test", [to], message("alice@a.test", to, subject),
        login=("alice@a.test", "pw"), submission=True)
    return (await wait_for(lambda: raw(c, "carol@c.test"), timeout=30))[-1]


@pytest_twisted.ensureDeferred
async def test_c_verifies_bs_seal_arc_pass(three):
    a, b, c, records = three
    stored = await forward_one(a, c, "forwarded")
    got = email.message_from_bytes(stored, policy=email.policy.default)
    (ar,) = ours(got, "mx.c.test")
    # B relayed: SPF of a.test fails at C; A's DKIM signature survives, so DMARC passes.
    assert "spf=fail" in ar and "dkim=pass" in ar and "dmarc=pass" in ar
    assert "arc=pass (i=1 sealed by b.test)" in ar
    assert "header.oldest-pass=0" in ar and "smtp.remote-ip=127.0.0.2" in ar
    seal = " ".join(str(got["ARC-Seal"]).split())
    assert "i=1" in seal and "cv=none" in seal and "d=b.test" in seal and "s=arc1" in seal
    aar = " ".join(str(got["ARC-Authentication-Results"]).split())
    assert aar.startswith("i=1; mx.b.test;")
    assert "spf=pass" in aar and "dkim=pass" in aar and "dmarc=pass" in aar and "arc=none" in aar
    # B's own Authentication-Results is in the message too, as B delivered it.
    (b_ar,) = ours(got, "mx.b.test")
    assert "arc=none" in b_ar
    # dkimpy's arcverify command on the message as C received it, DNS from a dict.
    assert "cv=b'pass' success" in arcverify_cli(as_received(stored), records)


@pytest_twisted.ensureDeferred
async def test_tampered_arc_seal_gives_arc_fail(three):
    a, b, c, records = three
    stored = await forward_one(a, c, "to be tampered")
    received = as_received(stored)
    head, sep, body = received.partition(b"\r\n\r\n")
    tampered = head.replace(b"cv=none", b"cv=pass", 1) + sep + body
    assert tampered != received
    await threads.deferToThread(send, c, "alice@a.test", ["carol@c.test"], tampered,
                                source="127.0.0.2")
    second = await wait_for(lambda: _at_least(raw(c, "carol@c.test"), 2))
    got = email.message_from_bytes(second[-1], policy=email.policy.default)
    (ar,) = ours(got, "mx.c.test")
    assert re.search(r"\barc=fail", ar) and not re.search(r"\barc=pass", ar)
    assert "cv=b'fail'" in arcverify_cli(as_received(second[-1]), records)


async def _at_least(d, n):
    found = await d
    return found if len(found) >= n else None


@pytest_twisted.ensureDeferred
async def test_alias_with_a_local_and_a_remote_target_delivers_both(three):
    a, b, c, _records = three
    stored = await forward_one(a, c, "to both", to="both@b.test")
    (local,) = await wait_for(lambda: b.folder("bob@b.test"))
    assert local["Subject"] == "to both"
    assert b"arc=pass" in stored


@pytest_twisted.ensureDeferred
async def test_mail_to_a_plain_user_is_not_sealed(three):
    a, b, c, _records = three
    await threads.deferToThread(
        send, a, "alice@a.test", ["bob@b.test"], message("alice@a.test", "bob@b.test", "plain"),
        login=("alice@a.test", "pw"), submission=True)
    (got,) = await wait_for(lambda: b.folder("bob@b.test"))
    assert got["ARC-Seal"] is None
    (ar,) = ours(got, "mx.b.test")
    assert "arc=none" in ar


@pytest_twisted.ensureDeferred
async def test_unknown_user_of_the_forwarding_domain_still_refused(three):
    a, b, c, _records = three
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await threads.deferToThread(send, b, "x@a.test", ["nobody@b.test"],
                                    message("x@a.test", "nobody@b.test", "x"), source="127.0.0.1")


@pytest.mark.parametrize("three", [{"trusted": ["b.test"]}], indirect=True)
@pytest_twisted.ensureDeferred
async def test_c_trusting_bs_seal_takes_unsigned_mail_dmarc_would_reject(three):
    """A's MTA sends unsigned mail for the alias (SPF and so DMARC pass at B); at C
    SPF fails and there is no DKIM: DMARC fails and a.test says p=reject, but C
    trusts b.test's seals and b.test recorded dmarc=pass, so C delivers it."""
    a, b, c, _records = three
    await threads.deferToThread(send, b, "alice@a.test", ["fwd@b.test"],
                                message("alice@a.test", "fwd@b.test", "unsigned"),
                                source="127.0.0.1")
    stored = (await wait_for(lambda: raw(c, "carol@c.test"), timeout=30))[-1]
    got = email.message_from_bytes(stored, policy=email.policy.default)
    (ar,) = ours(got, "mx.c.test")
    assert "spf=fail" in ar and "dkim=none" in ar and "dmarc=fail" in ar
    assert "local policy: dmarc=pass at trusted ARC sealer b.test" in " ".join(ar.split())
    assert "arc=pass" in ar


@pytest.mark.parametrize("three", [{"milter": {p.C_BODYEOB: [
    (p.R_DELRCPT, [b"<bob@b.test>"]), (p.R_CONTINUE, None)]}}], indirect=True)
@pytest_twisted.ensureDeferred
async def test_alias_forward_survives_a_milter_changing_the_recipients(three):
    """A milter removes bob: routing then follows the milter's recipient list, and
    the alias's forward to C is kept (and sealed)."""
    a, b, c, _records = three
    await threads.deferToThread(
        send, a, "alice@a.test", ["bob@b.test", "fwd@b.test"],
        message("alice@a.test", "fwd@b.test", "milter and alias"),
        login=("alice@a.test", "pw"), submission=True)
    stored = (await wait_for(lambda: raw(c, "carol@c.test"), timeout=30))[-1]
    assert b"arc=pass (i=1 sealed by b.test)" in stored
    assert await b.folder("bob@b.test") == []
