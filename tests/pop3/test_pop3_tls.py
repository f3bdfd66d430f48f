"""STLS (RFC 2595) with a throwaway certificate, and the CVE-2011-0411 injection case."""

from __future__ import annotations

import poplib
import ssl

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.pop3.pop3_clients import RawClient

# Several read chunks, so the producer runs over the STLS-upgraded transport.
MSG = b"From: a@example.test\r\nSubject: tls\r\n\r\n" + b".secret body line\r\n" * 60000


@pytest_twisted.ensureDeferred
async def test_stls_with_poplib_then_plaintext_login_is_allowed(pop3):
    host = await pop3(allow_plaintext="no", tls=True)
    await host.deliver(MSG)

    def session():
        client = poplib.POP3("127.0.0.1", host.port, timeout=10)
        before = client.capa()
        client.stls(ssl.create_default_context(cafile=host.cafile))
        after = client.capa()
        client.user("alice@example.test")
        client.pass_("secret")
        retr = client.retr(1)
        client.quit()
        return before, after, retr

    before, after, retr = await deferToThread(session)
    assert "STLS" in before and "USER" not in before and "SASL" not in before
    assert "STLS" not in after and "USER" in after and after["SASL"] == ["PLAIN"]
    assert b"\r\n".join(retr[1]) + b"\r\n" == MSG


@pytest_twisted.ensureDeferred
async def test_stls_discards_commands_pipelined_before_the_handshake(pop3):
    host = await pop3(allow_plaintext="yes", tls=True)

    def session():
        c = RawClient(host.port)
        # An attacker in the middle appends USER to the client's STLS in the same packet.
        c.send(b"STLS\r\nUSER alice@example.test\r\n")
        begin = c.line()
        assert c.buf == b""
        c.starttls(host.cafile)
        pass_reply = c.cmd(b"PASS secret")  # the injected USER must not count
        again = c.cmd(b"STLS")  # and TLS cannot be started twice
        c.cmd(b"USER alice@example.test")
        ok = c.cmd(b"PASS secret")
        after_login = c.cmd(b"STLS")
        c.cmd(b"QUIT")
        return begin, pass_reply, again, ok, after_login

    begin, pass_reply, again, ok, after_login = await deferToThread(session)
    assert begin.startswith(b"+OK")
    assert pass_reply.startswith(b"-ERR")
    assert again.startswith(b"-ERR")
    assert ok.startswith(b"+OK")
    assert after_login.startswith(b"-ERR")


@pytest_twisted.ensureDeferred
async def test_stls_not_offered_without_certificate(pop3):
    host = await pop3()

    def session():
        c = RawClient(host.port)
        return c.cmd(b"STLS")

    assert (await deferToThread(session)).startswith(b"-ERR")
