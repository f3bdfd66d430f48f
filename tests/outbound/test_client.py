"""The relay client over real sockets: against aiosmtpd (a server we did not write)
and a scripted server for per-recipient replies and STARTTLS faults."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from aiosmtpd.controller import Controller
from twisted.internet import reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint

from mailhost.message.dotstuffing import DotStuffer
from mailhost.outbound.body_sender import SMALL_MESSAGE
from mailhost.outbound.client import run_session
from mailhost.outbound.client_policy import ClientPolicy
from mailhost.outbound.envelope import Envelope, RecipientState
from mailhost.outbound.jobs import DELIVERED, PERMANENT, TEMPORARY, Job
from tests.mailhost_process import free_port
from tests.outbound.remote import ScriptedFactory, listen


class ListSource:
    def __init__(self, jobs):
        self.jobs = list(jobs)
        self.done = []

    def next_job(self):
        return self.jobs.pop(0) if self.jobs else None

    def job_done(self, job, outcomes, info):
        self.done.append((job, outcomes, info))


def make_job(tmp_path, body: bytes, rcpts, sender="alice@example.test", name="m"):
    path = tmp_path / name
    path.write_bytes(body)
    env = Envelope(id=name.upper() * 8, sender=sender, arrival=time.time(), size=len(body),
                   recipients=[RecipientState(r) for r in rcpts])
    return Job(env, "remote.test", list(env.recipients), str(path))


def policy(**kw):
    kw.setdefault("tls", "none")
    return ClientPolicy(hostname="a.test", mx_name="remote.test", **kw)


class Sink:
    def __init__(self):
        self.envelopes = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("reject"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 2.0.0 Message accepted"


@pytest.fixture
def aiosmtpd_server():
    sink = Sink()
    port = free_port()
    c = Controller(sink, hostname="127.0.0.1", port=port)
    c.start()
    yield sink, port
    c.stop()


def test_dot_stuffer_keeps_state_across_chunks():
    s = DotStuffer()
    out = s(b"a\r\n") + s(b".b\r\n.") + s(b"c\r\n")
    assert out == b"a\r\n..b\r\n..c\r\n"
    assert s.terminator() == b".\r\n"
    s2 = DotStuffer()
    assert s2(b".x") == b"..x" and s2.terminator() == b"\r\n.\r\n"
    s3 = DotStuffer()  # a CR/LF split across chunks
    assert s3(b"a\r") + s3(b"\n.z\r\n") == b"a\r\n..z\r\n"


@pytest_twisted.ensureDeferred
async def test_regression_dot_at_chunk_boundary_reaches_aiosmtpd_intact(tmp_path, aiosmtpd_server):
    """twisted.mail's transformChunk misses a '.' that starts a 16 KiB chunk; ours must not."""
    sink, port = aiosmtpd_server
    head = b"Subject: dots\r\n\r\n"
    need = 16384 - len(head)
    filler = b"".join(b"x" * 98 + b"\r\n" for _ in range(need // 100))
    filler += b"y" * (need - len(filler) - 2) + b"\r\n"
    body = head + filler + b".starts the second chunk\r\n..two dots\r\n.\r\nend\r\n"
    # Past SMALL_MESSAGE, so the body streams in 16 KiB FileSender chunks.
    pad = 16384 * 5 - len(body)
    body += b"".join(b"z" * 98 + b"\r\n" for _ in range(pad // 100 - 1))
    body += b"w" * (16384 * 5 - len(body) - 2) + b"\r\n" + b".at 80 KiB\r\n"
    assert body[16384:16385] == b"." and body[16384 * 5 : 16384 * 5 + 1] == b"."
    assert len(body) > SMALL_MESSAGE
    job = make_job(tmp_path, body, ["bob@remote.test", "reject@remote.test"])
    src = ListSource([job])
    result = await run_session(TCP4ClientEndpoint(reactor, "127.0.0.1", port), policy(), src)
    assert result.transacted and result.jobs == 1, result
    ((_, outcomes, _info),) = src.done
    assert outcomes["bob@remote.test"].kind == DELIVERED, outcomes
    assert outcomes["reject@remote.test"].kind == PERMANENT
    assert "5.1.1" in outcomes["reject@remote.test"].reply
    (env,) = sink.envelopes
    assert env.rcpt_tos == ["bob@remote.test"]
    assert env.original_content == body


@pytest_twisted.ensureDeferred
async def test_several_messages_per_connection_pipelined(tmp_path):
    f = ScriptedFactory()
    f.rcpt_reply = lambda a: "452 4.2.2 mailbox full" if a.startswith("full") else "250 ok"
    port = await listen(f)
    try:
        jobs = [make_job(tmp_path, b"Subject: %d\r\n\r\nhi\r\n" % i,
                         ["a@remote.test", "full@remote.test"], name=f"m{i}") for i in range(3)]
        src = ListSource(jobs)
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        result = await run_session(ep, policy(), src)
    finally:
        await port.stopListening()
    assert result.jobs == 3 and f.connections == 1
    assert len(f.received) == 3
    for _job, outcomes, _ in src.done:
        assert outcomes["a@remote.test"].kind == DELIVERED
        assert outcomes["full@remote.test"].kind == TEMPORARY
    assert f.received[0].mail_line.startswith("MAIL FROM:<alice@example.test> SIZE=")
    assert "BODY=8BITMIME" in f.received[0].mail_line
    assert sum(c.startswith("RSET") for c in f.commands) == 0


@pytest_twisted.ensureDeferred
async def test_mail_from_rejected_and_data_rejected(tmp_path):
    f = ScriptedFactory(extensions=["8BITMIME"])  # no PIPELINING: one command at a time
    replies = iter(["550 5.7.1 sender refused", "250 ok"])
    f.mail_reply = lambda line: next(replies)
    f.data_reply = lambda rcpts, data: "554 5.6.0 content rejected"
    port = await listen(f)
    try:
        jobs = [make_job(tmp_path, b"S: 1\r\n\r\nx\r\n", ["a@remote.test"], name="m1"),
                make_job(tmp_path, b"S: 2\r\n\r\nx\r\n", ["a@remote.test"], name="m2")]
        src = ListSource(jobs)
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await run_session(ep, policy(), src)
    finally:
        await port.stopListening()
    first, second = (o["a@remote.test"] for _, o, _ in src.done)
    assert first.kind == PERMANENT and "sender refused" in first.reply
    assert second.kind == PERMANENT and "5.6.0" in second.reply
    assert not any(c.startswith("RCPT") for c in f.commands[:2])


@pytest_twisted.ensureDeferred
async def test_dsn_parameters_passed_when_offered(tmp_path):
    f = ScriptedFactory(extensions=["PIPELINING", "DSN", "SIZE 1000000"])
    port = await listen(f)
    try:
        job = make_job(tmp_path, b"S: 1\r\n\r\nx\r\n", ["a@remote.test"])
        job.envelope.ret = "HDRS"
        job.envelope.envid = "id+1 x"
        job.recipients[0].notify = ["FAILURE", "SUCCESS"]
        job.recipients[0].orcpt = "rfc822;a@remote.test"
        src = ListSource([job])
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await run_session(ep, policy(), src)
    finally:
        await port.stopListening()
    (r,) = f.received
    assert "RET=HDRS" in r.mail_line and "ENVID=id+2B1+20x" in r.mail_line
    assert "NOTIFY=FAILURE,SUCCESS" in r.rcpt_lines[0] and "ORCPT=rfc822;a@remote.test" in r.rcpt_lines[0]
    assert src.done[0][1]["a@remote.test"].dsn_passed


@pytest.fixture
def server_tls(tmp_path):
    from mailhost.config import TLSConfig
    from mailhost.tls import server_options, write_selfsigned

    cert, key = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    write_selfsigned("remote.test", cert, key)
    return server_options(TLSConfig(cert=cert, key=key))


@pytest_twisted.ensureDeferred
async def test_opportunistic_starttls_is_used(tmp_path, server_tls):
    f = ScriptedFactory(tls_options=server_tls)
    port = await listen(f)
    try:
        src = ListSource([make_job(tmp_path, b"S: 1\r\n\r\nx\r\n", ["a@remote.test"])])
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        result = await run_session(
            ep, policy(tls="opportunistic", tls_context=ssl.CertificateOptions()), src)
    finally:
        await port.stopListening()
    assert result.tls and f.received[0].tls
    assert src.done[0][2]["tls"] is True


@pytest_twisted.ensureDeferred
async def test_broken_tls_handshake_is_reported_for_plaintext_fallback(tmp_path, server_tls):
    f = ScriptedFactory(tls_options=server_tls)
    f.break_tls = True
    port = await listen(f)
    try:
        src = ListSource([make_job(tmp_path, b"S: 1\r\n\r\nx\r\n", ["a@remote.test"])])
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        result = await run_session(
            ep, policy(tls="opportunistic", tls_context=ssl.CertificateOptions()), src)
    finally:
        await port.stopListening()
    assert result.tls_failed and not result.transacted and src.done == []


@pytest_twisted.ensureDeferred
async def test_verify_policy_rejects_untrusted_certificate(tmp_path, server_tls):
    f = ScriptedFactory(tls_options=server_tls)
    port = await listen(f)
    try:
        src = ListSource([make_job(tmp_path, b"S: 1\r\n\r\nx\r\n", ["a@remote.test"])])
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        result = await run_session(
            ep, policy(tls="verify", tls_context=ssl.optionsForClientTLS("remote.test")), src)
    finally:
        await port.stopListening()
    assert not result.transacted and f.received == []
    assert result.error


@pytest_twisted.ensureDeferred
async def test_verify_policy_needs_starttls(tmp_path):
    f = ScriptedFactory()
    port = await listen(f)
    try:
        src = ListSource([make_job(tmp_path, b"S: 1\r\n\r\nx\r\n", ["a@remote.test"])])
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        result = await run_session(
            ep, policy(tls="verify", tls_context=ssl.optionsForClientTLS("remote.test")), src)
    finally:
        await port.stopListening()
    assert not result.transacted and "TLS" in result.error


@pytest_twisted.ensureDeferred
async def test_connection_refused_and_timeout(tmp_path):
    src = ListSource([make_job(tmp_path, b"S: 1\r\n\r\nx\r\n", ["a@remote.test"])])
    ep = TCP4ClientEndpoint(reactor, "127.0.0.1", free_port(), timeout=2)
    result = await run_session(ep, policy(), src)
    assert not result.transacted and "cannot connect" in result.error
    f = ScriptedFactory()
    f.data_reply = lambda rcpts, data: None  # never answers the end of DATA
    port = await listen(f)
    try:
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        result = await run_session(ep, policy(final_timeout=0.5), src)
    finally:
        await port.stopListening()
    assert result.transacted and "timeout" in result.error
    assert "final reply" in result.error  # says which stage timed out
    assert src.done[0][1]["a@remote.test"].kind == TEMPORARY


@pytest_twisted.ensureDeferred
async def test_pipelined_data_after_every_rcpt_failed(tmp_path):
    f = ScriptedFactory()  # PIPELINING: MAIL, RCPT..., DATA go in one write
    f.rcpt_reply = lambda a: "550 5.1.1 unknown" if a.startswith("bad") else "250 ok"
    port = await listen(f)
    try:
        jobs = [make_job(tmp_path, b"S: 1\r\n\r\nx\r\n", ["bad1@remote.test", "bad2@remote.test"],
                         name="m1"),
                make_job(tmp_path, b"S: 2\r\n\r\ny\r\n", ["good@remote.test"], name="m2")]
        src = ListSource(jobs)
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        result = await run_session(ep, policy(), src)
    finally:
        await port.stopListening()
    first, second = (o for _, o, _ in src.done)
    assert {o.kind for o in first.values()} == {PERMANENT}
    assert second["good@remote.test"].kind == DELIVERED
    assert result.jobs == 2 and f.connections == 1 and len(f.received) == 1
    assert f.received[0].data == b"S: 2\r\n\r\ny\r\n"


class WaitingSource(ListSource):
    """A source whose next job turns up while the connection idles."""

    def __init__(self, jobs, later):
        super().__init__(jobs)
        self.later = later
        self.waits = []

    def wait_job(self, timeout):
        from twisted.internet import defer

        d = defer.Deferred()
        self.waits.append(timeout)
        if self.later:
            self.jobs.append(self.later.pop(0))
            reactor.callLater(0.05, d.callback, True)
        else:
            reactor.callLater(0.05, d.callback, False)
        return d


@pytest_twisted.ensureDeferred
async def test_idle_connection_takes_mail_that_turns_up_then_quits(tmp_path):
    f = ScriptedFactory()
    port = await listen(f)
    try:
        first = make_job(tmp_path, b"S: 1\r\n\r\nx\r\n", ["a@remote.test"], name="m1")
        later = make_job(tmp_path, b"S: 2\r\n\r\ny\r\n", ["a@remote.test"], name="m2")
        src = WaitingSource([first], [later])
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        result = await run_session(ep, policy(idle_timeout=1.5), src)
    finally:
        await port.stopListening()
    assert result.jobs == 2 and f.connections == 1 and len(f.received) == 2
    assert src.waits == [1.5, 1.5]  # waited, got a job; waited again, nothing: QUIT


def _chunking():
    return ScriptedFactory(extensions=["PIPELINING", "8BITMIME", "SIZE 0", "CHUNKING"])


@pytest_twisted.ensureDeferred
async def test_small_message_goes_as_one_pipelined_bdat_chunk(tmp_path):
    """CHUNKING + PIPELINING: MAIL, RCPT and BDAT LAST with the octets unstuffed, one
    write; a body without a final CRLF gets one, as with DATA."""
    f = _chunking()
    port = await listen(f)
    bodies = [b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nend\r\n",
              b"Subject: no final newline\r\n\r\nlast line", b""]
    try:
        jobs = [make_job(tmp_path, body, ["a@remote.test"], name=f"m{i}")
                for i, body in enumerate(bodies)]
        src = ListSource(jobs)
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        result = await run_session(ep, policy(), src)
    finally:
        await port.stopListening()
    assert result.jobs == 3 and f.connections == 1
    assert [r.data for r in f.received] == [bodies[0], bodies[1] + b"\r\n", b""]
    assert [c for c in f.commands if c.startswith(("BDAT", "DATA"))] == [
        f"BDAT {len(bodies[0])} LAST", f"BDAT {len(bodies[1]) + 2} LAST", "BDAT 0 LAST"]
    assert all(o.kind == DELIVERED for _, outs, _ in src.done for o in outs.values())


@pytest_twisted.ensureDeferred
async def test_bdat_refusals_and_every_rcpt_failed(tmp_path):
    """A refused chunk fails the accepted recipients (4xx temporary, 5xx permanent);
    with every RCPT refused the chunk is still sent and the next message goes through."""
    f = _chunking()
    f.rcpt_reply = lambda a: "550 5.1.1 unknown" if a.startswith("bad") else "250 ok"
    replies = iter(["451 4.3.0 try later", "554 5.6.0 content refused", "250 2.0.0 ok"])
    f.data_reply = lambda rcpts, data: next(replies)
    port = await listen(f)
    try:
        jobs = [make_job(tmp_path, b"S: %d\r\n\r\nx\r\n" % i, rcpts, name=f"m{i}")
                for i, rcpts in enumerate([["a@remote.test"], ["a@remote.test"],
                                           ["bad1@remote.test", "bad2@remote.test"],
                                           ["a@remote.test", "bad@remote.test"]])]
        src = ListSource(jobs)
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        result = await run_session(ep, policy(), src)
    finally:
        await port.stopListening()
    assert result.jobs == 4 and f.connections == 1 and not result.error
    kinds = [{a: o.kind for a, o in outs.items()} for _, outs, _ in src.done]
    assert kinds == [{"a@remote.test": TEMPORARY}, {"a@remote.test": PERMANENT},
                     {"bad1@remote.test": PERMANENT, "bad2@remote.test": PERMANENT},
                     {"a@remote.test": DELIVERED, "bad@remote.test": PERMANENT}]
    assert "451 4.3.0 try later" in src.done[0][1]["a@remote.test"].reply
    assert len(f.received) == 1 and f.received[0].data == b"S: 3\r\n\r\nx\r\n"


@pytest_twisted.ensureDeferred
async def test_large_message_uses_data_even_with_chunking(tmp_path):
    f = _chunking()
    port = await listen(f)
    body = b"Subject: big\r\n\r\n" + b".x" * (SMALL_MESSAGE // 2) + b"\r\n"
    try:
        src = ListSource([make_job(tmp_path, body, ["a@remote.test"])])
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await run_session(ep, policy(), src)
    finally:
        await port.stopListening()
    assert "DATA" in f.commands and not any(c.startswith("BDAT") for c in f.commands)
    assert f.received[0].data == body


@pytest_twisted.ensureDeferred
async def test_message_recycled_while_streaming_is_never_sent_with_another_ones_bytes(
    tmp_path, monkeypatch
):
    """``mailhost queue delete`` (or an early final reply) while a large message is
    streamed: the spool recycles its file, and the next commit refills the same inode.
    The stream must stop there, not go on with the other message's bytes."""
    from mailhost.outbound import spool as spool_mod
    from mailhost.outbound.spool import SpoolFiles
    from mailhost.outbound.spool_writer import SpoolWriter
    from mailhost.store.reader import CHUNK_SIZE

    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()

    doomed = b"Subject: doomed\r\n\r\n" + b"a" * (3 * CHUNK_SIZE) + b"\r\n"
    other = b"Subject: other\r\n\r\n" + b"b" * (3 * SMALL_MESSAGE) + b"\r\n"
    w = SpoolWriter(files, "a@b.test", None, None, lambda e: None, time.time)
    w.write(doomed)
    qid = await w.commit([])
    env = files.load_envelope_sync(qid)
    env.recipients = [RecipientState("a@remote.test")]

    class SwapAfterFirstRead(spool_mod.MessageFile):
        calls = 0

        def read(self, size=-1):
            data = super().read(size)
            SwapAfterFirstRead.calls += 1
            if SwapAfterFirstRead.calls == 1:
                files.remove_sync(qid)  # recycled into free/
                w2 = SpoolWriter(files, "c@d.test", None, None, lambda e: None, time.time)
                w2.write(other)
                files.commit_sync(w2._path, Envelope(
                    id=w2.id, sender="c@d.test", arrival=time.time(), size=len(other),
                    recipients=[RecipientState("z@else.test")]), bytes(w2._buffer))
            return data

    monkeypatch.setattr(spool_mod, "MessageFile", SwapAfterFirstRead)
    f = ScriptedFactory()
    port = await listen(f)
    try:
        src = ListSource([Job(env, "remote.test", list(env.recipients), files.message_path(qid))])
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        result = await run_session(ep, policy(), src)
    finally:
        await port.stopListening()
    assert SwapAfterFirstRead.calls == 1  # the second read found the file recycled
    assert "message left the queue" in result.error
    assert f.received == []  # never a message made of two
    assert [o.kind for _, outs, _ in src.done for o in outs.values()] == [TEMPORARY]


@pytest_twisted.ensureDeferred
async def test_auth_login_when_plain_is_not_offered(tmp_path):
    """A smarthost offering only AUTH LOGIN gets the two-step exchange."""
    from aiosmtpd.smtp import AuthResult

    seen = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        seen.append((mechanism, auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret")

    sink = Sink()
    port = free_port()
    c = Controller(sink, hostname="127.0.0.1", port=port, authenticator=authenticator,
                   auth_require_tls=False, auth_required=True,
                   auth_exclude_mechanism=["PLAIN"])
    c.start()
    try:
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        src = ListSource([make_job(tmp_path, b"S: 1\r\n\r\nx\r\n", ["a@remote.test"])])
        result = await run_session(ep, policy(username="relay", password="s3cret",
                                              allow_plain_auth=True), src)
    finally:
        c.stop()
    assert not result.error and src.done[0][1]["a@remote.test"].kind == DELIVERED
    assert seen == [("LOGIN", b"relay", b"s3cret")] and len(sink.envelopes) == 1
