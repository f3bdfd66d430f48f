"""The pipeline's stages, settings and runner, without sockets (``StaticLookup``)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailhost.config import Config
from mailhost.mailauth.dkim_keys import generate_pem, key_from_pem
from mailhost.message.stage import ACCEPT, HeaderSplitter, IStage, MessageContext, Pipeline, Verdict
from mailhost.pipeline import STAGES, PipelineConfigError, PipelineSettings, build_pipeline
from mailhost.testing.dns import StaticLookup

KEY = key_from_pem("a.test", "s1", generate_pem("ed25519"))
ARC_KEY = key_from_pem("b.test", "arc1", generate_pem("rsa"))
ZONES = {
    "a.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.a.test": {"TXT": ["v=DMARC1; p=reject"]},
    "s1._domainkey.a.test": {"TXT": [KEY.public_record]},
}
MESSAGE = (b"Authentication-Results: mx.b.test; dkim=pass (forged)\r\n"
           b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: hi\r\n\r\nHello.\r\n")


@pytest.fixture(autouse=True)
def _data_dir_in_tmp(tmp_path, monkeypatch):
    """``Config()``'s relative data_dir (the pipeline's spool) lands in tmp, not the checkout."""
    monkeypatch.chdir(tmp_path)


def settings(**pipeline) -> PipelineSettings:
    c = Config()
    c.server.hostname = "mx.b.test"
    c.pipeline.stages = list(STAGES)
    # Nothing listens on port 1: the milter stage follows its default action, accept.
    c.pipeline.milters = {"none": "inet:1@127.0.0.1 default_action=accept"}
    for k, v in pipeline.items():
        setattr(c.pipeline, k, v)
    return PipelineSettings.from_config(c)


def pipeline(**kw) -> Pipeline:
    return build_pipeline(settings(**kw), StaticLookup(ZONES), keys=[KEY], arc_key=ARC_KEY)


async def run(p: Pipeline, ctx: MessageContext, message: bytes, chunk: int = 7) -> Verdict:
    p.start(ctx)
    splitter = HeaderSplitter(p, ctx)
    for i in range(0, len(message), chunk):
        splitter.feed(message[i:i + chunk])
    splitter.close()
    return await p.finish(ctx)


def test_every_stage_provides_istage():
    p = pipeline()
    assert [s.name for s in p.stages] == list(STAGES)
    for stage in p.stages:
        verifyObject(IStage, stage)


@pytest.mark.parametrize("stages, error", [
    (["spf", "rbl"], "unknown stage 'rbl'"),
    (["dmarc", "spf"], "'spf' must come before 'dmarc'"),
    (["auth_results", "dkim"], "'auth_results' must come after dkim"),
    (["spf", "spf"], "listed twice"),
])
def test_bad_stage_lists_name_the_key(stages, error):
    with pytest.raises(PipelineConfigError, match=error) as e:
        settings(stages=stages)
    assert str(e.value).startswith("pipeline.")


def test_authserv_id_defaults_to_the_hostname_and_selectors_are_split():
    s = settings(dkim_selectors={"A.test.": "r1, e1"})
    assert s.authserv_id == "mx.b.test"
    assert s.dkim_selectors == (("a.test", ("r1", "e1")),)


@pytest_twisted.ensureDeferred
async def test_trusted_client_gets_signed_and_stranger_is_rejected():
    p = pipeline()
    signed = MessageContext("192.0.2.1", "mx.a.test", "alice@a.test", trusted=True)
    assert await run(p, signed, MESSAGE) == ACCEPT
    head = signed.prepended
    assert head.startswith(b"DKIM-Signature:")  # the last modifier's field is on top
    assert b"Authentication-Results: mx.b.test;" in head and b"dkim=none" in head
    assert b"(forged)" not in signed.header_block  # ours stripped

    stranger = MessageContext("198.51.100.7", "evil.example", "ceo@a.test")
    verdict = await run(p, stranger, MESSAGE)
    assert (verdict.action, verdict.code, verdict.status) == ("reject", 550, "5.7.1")
    assert stranger.results["dmarc"].result == "fail"
    assert b"DKIM-Signature" not in stranger.prepended  # never sign for strangers


@pytest_twisted.ensureDeferred
async def test_monitor_mode_records_and_accepts():
    ctx = MessageContext("198.51.100.7", "evil.example", "ceo@a.test")
    assert await run(pipeline(dmarc_mode="monitor"), ctx, MESSAGE) == ACCEPT
    assert b"dmarc=fail" in ctx.prepended


@pytest_twisted.ensureDeferred
async def test_authenticated_submission_is_not_checked():
    ctx = MessageContext("198.51.100.7", "laptop", "alice@a.test", user="alice@a.test",
                         submission=True, trusted=True)
    assert await run(pipeline(), ctx, MESSAGE) == ACCEPT
    assert not {"spf", "dkim", "dmarc"} & set(ctx.results)
    assert b"Authentication-Results" not in ctx.prepended


@pytest_twisted.ensureDeferred
async def test_a_failing_stage_is_logged_and_skipped():
    @implementer(IStage)
    class Broken:
        name = "broken"

        def envelope(self, ctx):
            pass

        def message(self, ctx):
            return None

        def finish(self, ctx):
            raise RuntimeError("bug")

    @implementer(IStage)
    class Junk:
        name = "junk"

        def envelope(self, ctx):
            pass

        def message(self, ctx):
            return None

        def finish(self, ctx):
            return defer.succeed(Verdict.quarantine())

    ctx = MessageContext("192.0.2.1", "h", "s@a.test")
    verdict = await run(Pipeline([Broken(), Junk()]), ctx, MESSAGE)
    assert verdict.action == "quarantine" and ctx.quarantined


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64, 10_000])
def test_header_splitter_finds_the_header_block_in_any_chunking(chunk):
    seen = []

    @implementer(IStage)
    class Body:
        name = "body"

        def envelope(self, ctx):
            pass

        def message(self, ctx):
            class C:
                def update(self, data):
                    seen.append(data)
            return C()

        def finish(self, ctx):
            return None

    ctx = MessageContext("192.0.2.1", "h", "s@a.test")
    splitter = HeaderSplitter(Pipeline([Body()]), ctx)
    for i in range(0, len(MESSAGE), chunk):
        splitter.feed(MESSAGE[i:i + chunk])
    splitter.close()
    head, _, body = MESSAGE.partition(b"\r\n\r\n")
    assert ctx.header_block == head + b"\r\n\r\n"
    assert splitter.header_length == len(head) + 4
    assert b"".join(seen) == body


def test_header_splitter_bounds_the_header_it_holds():
    ctx = MessageContext("192.0.2.1", "h", "s@a.test")
    splitter = HeaderSplitter(Pipeline(()), ctx, max_header=100)
    splitter.feed(b"X-Long: " + b"a" * 200 + b"\r\n")
    assert splitter.header_length == 210  # cut where it passed the bound
