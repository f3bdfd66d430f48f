"""SMTP smuggling (2023) through mailhost, against real processes and sockets.

Regression for issue 17 item 3: a body holding ``<CR>.<CR>`` followed by ``MAIL
FROM:<ceo@…>`` must never reach a downstream server with the bare CRs in it, which a
server that also ends DATA at ``<CR>.<CR>`` would read as a second, forged message.
A ``twistd -n mailhost`` relays (``smtp.relay_networks``) to a scripted receiving
server that records every octet the relay client sends (DATA and, when offered, BDAT).
With ``smtp.bare_newline = "reject"`` the message is refused at once and never
relayed.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from tests.mailhost_process import MailHostProcess
from tests.outbound.remote import ScriptedFactory, ScriptedSMTP, listen
from tests.smtp.conftest import RawClient

pytestmark = pytest.mark.slow

BODY = (b"From: attacker@far.test\r\nTo: victim@downstream.test\r\nSubject: hello\r\n\r\n"
        b"innocent\r.\r"
        b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<victim@downstream.test>\r\nDATA\r\n"
        b"From: ceo@example.test\r\nSubject: wire the money\r\n\r\nsmuggled\r\n")
CLEAN = b"From: attacker@far.test\r\nSubject: control\r\n\r\nnothing hidden\r\n"


class RecordingSMTP(ScriptedSMTP):
    """The scripted server, keeping every octet the client sent."""

    def dataReceived(self, data):  # noqa: N802 (Twisted's name)
        self.factory.wire += data
        super().dataReceived(data)


def recording_remote(chunking: bool) -> ScriptedFactory:
    extensions = ["PIPELINING", "8BITMIME", "SIZE 0"] + (["CHUNKING"] if chunking else [])
    factory = ScriptedFactory(hostname="mx.downstream.test", extensions=extensions)
    factory.protocol = RecordingSMTP
    factory.wire = b""
    return factory


def relay_host(mailhost_factory, name: str, port: int, policy: str) -> MailHostProcess:
    return mailhost_factory(name, extra={
        "smtp": {"relay_networks": ["127.0.0.1/32"], "bare_newline": policy},
        "outbound": {"smarthost": f"127.0.0.1:{port}", "tls_policy": "none",
                     "retry_initial": 1.0, "retry_max": 1.0, "connect_timeout": 5.0}})


def send(port: int, body: bytes) -> tuple[bytes, bool]:
    """One raw SMTP transaction; (the reply to the final dot, server closed after it)."""
    c = RawClient(port)
    try:
        c.cmd(b"EHLO attacker.far.test")
        assert c.cmd(b"MAIL FROM:<attacker@far.test>").startswith(b"250")
        assert c.cmd(b"RCPT TO:<victim@downstream.test>").startswith(b"250")
        assert c.cmd(b"DATA").startswith(b"354")
        c.send(body + b".\r\n")
        reply = c.reply()
        if not reply.startswith(b"250"):
            return reply, c.closed()
        c.cmd(b"QUIT")
        return reply, True
    finally:
        c.close()


def bare(data: bytes) -> bool:
    rest = data.replace(b"\r\n", b"")
    return b"\r" in rest or b"\n" in rest


async def wait_received(remote: ScriptedFactory, n: int, proc: MailHostProcess) -> None:
    d = remote.wait_for(n)
    timeout = reactor.callLater(30, d.cancel)
    try:
        await d
    except defer.CancelledError:
        raise AssertionError(f"nothing relayed; log:\n{proc.log()[-3000:]}") from None
    finally:
        if timeout.active():
            timeout.cancel()


@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
@pytest_twisted.ensureDeferred
async def test_smuggling_pattern_is_relayed_without_bare_cr(mailhost_factory, chunking):
    remote = recording_remote(chunking)
    port = await listen(remote)
    proc = relay_host(mailhost_factory, "relay", port.getHost().port, "normalize")
    try:
        await threads.deferToThread(proc.start)
        reply, _ = await threads.deferToThread(send, proc.ports["smtp"], BODY)
        assert reply.startswith(b"250 2.0.0"), reply
        await wait_received(remote, 1, proc)
        await threads.deferToThread(proc.stop)
    finally:
        await port.stopListening()
    (got,) = remote.received
    assert not bare(remote.wire), remote.wire  # nothing the client sent had one
    # One message, one MAIL FROM: the smuggled envelope is only text in the body.
    mails = [c for c in remote.commands if c.upper().startswith("MAIL")]
    assert len(mails) == 1 and mails[0].startswith("MAIL FROM:<attacker@far.test>")
    assert got.mail_from == "attacker@far.test" and got.rcpts == ["victim@downstream.test"]
    assert got.data.endswith(b"innocent\r\n.\r\nMAIL FROM:<ceo@example.test>\r\n"
                             b"RCPT TO:<victim@downstream.test>\r\nDATA\r\n"
                             b"From: ceo@example.test\r\nSubject: wire the money\r\n\r\n"
                             b"smuggled\r\n")
    if chunking:
        assert b"BDAT " in remote.wire
    else:
        assert b"\r\n..\r\nMAIL FROM:<ceo@example.test>\r\n" in remote.wire  # stuffed


@pytest_twisted.ensureDeferred
async def test_reject_policy_refuses_the_smuggling_pattern_and_relays_nothing(mailhost_factory):
    remote = recording_remote(chunking=False)
    port = await listen(remote)
    proc = relay_host(mailhost_factory, "strict", port.getHost().port, "reject")
    try:
        await threads.deferToThread(proc.start)
        reply, closed = await threads.deferToThread(send, proc.ports["smtp"], BODY)
        assert reply == b"550 5.5.2 Error: bare <CR> received"
        assert closed
        # The control: a clean message afterwards is relayed, and is the only one.
        reply, _ = await threads.deferToThread(send, proc.ports["smtp"], CLEAN)
        assert reply.startswith(b"250 2.0.0"), reply
        await wait_received(remote, 1, proc)
        await threads.deferToThread(proc.stop)
    finally:
        await port.stopListening()
    (got,) = remote.received
    assert got.data.endswith(CLEAN)
    assert b"ceo@example.test" not in remote.wire and not bare(remote.wire)
