"""STARTTLS command injection (CVE-2011-0411) and state reset, for SMTP, POP3 and IMAP.

An attacker on the path appends commands to the client's STARTTLS in the same TCP
segment. A vulnerable server buffers them and runs them after the handshake, as if
they had come over TLS from the client. Each test pipelines a state-changing command
behind STARTTLS/STLS in one ``sendall`` and then proves, over TLS, that it never ran.
"""

from __future__ import annotations

import base64
import ssl

import pytest

from tests.security.hosts import PASSWORD, USER, TLSHost
from tests.security.wire import Wire


@pytest.fixture(scope="module")
def lax_host(tmp_path_factory):
    """Plaintext auth allowed, so a session can authenticate before STARTTLS."""
    host = TLSHost(str(tmp_path_factory.mktemp("laxhost")), plaintext="yes").start()
    yield host
    host.kill()


def ctx(host) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=host.cafile)


def plain_b64(user: str = USER, password: str = PASSWORD) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


# -- SMTP ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["smtp", "submission"])
def test_smtp_commands_pipelined_with_starttls_are_discarded(tls_host, kind):
    with Wire(tls_host.ports[kind]) as w:
        assert w.line().startswith(b"220 ")
        w.send(b"EHLO client.test\r\n")
        assert w.smtp_reply()[-1].startswith(b"250 ")
        w.send(b"STARTTLS\r\nMAIL FROM:<alice@example.test>\r\n")
        assert w.line().startswith(b"220 ")
        w.starttls(ctx(tls_host))
        # Nothing may be answered for the injected MAIL.
        assert w.quiet() == b""
        w.send(b"EHLO client.test\r\n")
        ehlo = b"".join(w.smtp_reply())
        assert b"STARTTLS" not in ehlo
        # Had the injected MAIL run, this RCPT would be accepted.
        w.send(b"RCPT TO:<bob@example.test>\r\n")
        assert w.smtp_reply()[-1].startswith(b"503 ")


@pytest.mark.parametrize("kind", ["smtp", "submission"])
def test_smtp_ehlo_is_forgotten_after_starttls(tls_host, kind):
    with Wire(tls_host.ports[kind]) as w:
        w.line()
        w.send(b"EHLO client.test\r\n")
        w.smtp_reply()
        w.send(b"STARTTLS\r\n")
        assert w.line().startswith(b"220 ")
        w.starttls(ctx(tls_host))
        w.send(b"MAIL FROM:<alice@example.test>\r\n")
        assert w.smtp_reply()[-1].startswith(b"503 "), "EHLO must be sent again after TLS"


def test_smtp_auth_is_forgotten_or_starttls_refused_after_auth(lax_host):
    """RFC 3207: after TLS the server MUST discard what it knew, authentication included."""
    with Wire(lax_host.ports["submission"]) as w:
        w.line()
        w.send(b"EHLO client.test\r\n")
        w.smtp_reply()
        w.send(b"AUTH PLAIN " + plain_b64() + b"\r\n")
        assert w.smtp_reply()[-1].startswith(b"235 ")
        w.send(b"STARTTLS\r\n")
        reply = w.line()
        if reply.startswith(b"5"):
            return  # refusing STARTTLS after AUTH is also safe
        assert reply.startswith(b"220 ")
        w.starttls(ctx(lax_host))
        w.send(b"EHLO client.test\r\n")
        w.smtp_reply()
        # Unauthenticated again: AUTH is accepted anew, and relaying is refused.
        w.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<someone@remote.example>\r\n")
        w.smtp_reply()
        rcpt = w.smtp_reply()[-1]
        assert rcpt[:1] in (b"5", b"4") and not rcpt.startswith(b"250"), rcpt
        w.send(b"RSET\r\n")
        w.smtp_reply()
        w.send(b"AUTH PLAIN " + plain_b64() + b"\r\n")
        assert w.smtp_reply()[-1].startswith(b"235 ")


def test_smtp_injected_auth_does_not_authenticate(lax_host):
    with Wire(lax_host.ports["submission"]) as w:
        w.line()
        w.send(b"EHLO client.test\r\n")
        w.smtp_reply()
        w.send(b"STARTTLS\r\nEHLO evil\r\nAUTH PLAIN " + plain_b64() + b"\r\n")
        assert w.line().startswith(b"220 ")
        w.starttls(ctx(lax_host))
        assert w.quiet() == b""
        w.send(b"EHLO client.test\r\n")
        w.smtp_reply()
        w.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<someone@remote.example>\r\n")
        w.smtp_reply()
        assert not w.smtp_reply()[-1].startswith(b"250")


# -- POP3 ----------------------------------------------------------------------------


def test_pop3_commands_pipelined_with_stls_are_discarded(tls_host):
    with Wire(tls_host.ports["pop3"]) as w:
        assert w.line().startswith(b"+OK")
        w.send(b"STLS\r\nUSER " + USER.encode() + b"\r\n")
        assert w.line().startswith(b"+OK")
        w.starttls(ctx(tls_host))
        assert w.quiet() == b""
        # Had the injected USER run, PASS alone would log in.
        w.send(b"PASS " + PASSWORD.encode() + b"\r\n")
        assert w.line().startswith(b"-ERR")
        w.send(b"STAT\r\n")
        assert w.line().startswith(b"-ERR")


def test_pop3_capabilities_change_after_stls(tls_host):
    with Wire(tls_host.ports["pop3"]) as w:
        w.line()
        w.send(b"CAPA\r\n")
        before = w.until(lambda ln: ln == b".\r\n")
        assert b"STLS\r\n" in before and b"USER\r\n" not in before
        w.send(b"STLS\r\n")
        w.line()
        w.starttls(ctx(tls_host))
        w.send(b"CAPA\r\n")
        after = w.until(lambda ln: ln == b".\r\n")
        assert b"STLS\r\n" not in after and b"USER\r\n" in after
        w.send(b"STLS\r\n")
        assert w.line().startswith(b"-ERR")


def test_pop3_injected_auth_does_not_authenticate(lax_host):
    with Wire(lax_host.ports["pop3"]) as w:
        w.line()
        w.send(b"STLS\r\nAUTH PLAIN " + plain_b64() + b"\r\n")
        assert w.line().startswith(b"+OK")
        w.starttls(ctx(lax_host))
        assert w.quiet() == b""
        w.send(b"STAT\r\n")
        assert w.line().startswith(b"-ERR")


# -- IMAP ----------------------------------------------------------------------------


def test_imap_commands_pipelined_with_starttls_are_discarded(tls_host):
    with Wire(tls_host.ports["imap"]) as w:
        assert w.line().startswith(b"* OK")
        w.send(b"a STARTTLS\r\nb LOGIN " + USER.encode() + b" " + PASSWORD.encode() +
               b"\r\nc SELECT INBOX\r\n")
        assert w.tagged(b"a")[-1].startswith(b"a OK")
        w.starttls(ctx(tls_host))
        assert w.quiet() == b""
        w.send(b"d SELECT INBOX\r\n")
        lines = w.tagged(b"d")
        assert not any(ln.startswith((b"b ", b"c ")) for ln in lines), lines
        assert lines[-1].startswith((b"d BAD", b"d NO")), lines


def test_imap_injected_login_does_not_authenticate_even_when_allowed(lax_host):
    with Wire(lax_host.ports["imap"]) as w:
        w.line()
        w.send(b"a STARTTLS\r\nb LOGIN " + USER.encode() + b" " + PASSWORD.encode() + b"\r\n")
        assert w.tagged(b"a")[-1].startswith(b"a OK")
        w.starttls(ctx(lax_host))
        assert w.quiet() == b""
        w.send(b"c SELECT INBOX\r\n")
        assert w.tagged(b"c")[-1].startswith((b"c BAD", b"c NO"))


def test_imap_capabilities_change_after_starttls(tls_host):
    with Wire(tls_host.ports["imap"]) as w:
        w.line()
        w.send(b"a CAPABILITY\r\n")
        before = b"".join(w.tagged(b"a"))
        assert b"STARTTLS" in before and b"LOGINDISABLED" in before
        assert b"AUTH=PLAIN" not in before
        w.send(b"b STARTTLS\r\n")
        w.tagged(b"b")
        w.starttls(ctx(tls_host))
        w.send(b"c CAPABILITY\r\n")
        after = b"".join(w.tagged(b"c"))
        assert b"STARTTLS" not in after and b"LOGINDISABLED" not in after
        assert b"AUTH=PLAIN" in after
        w.send(b"d STARTTLS\r\n")
        assert w.tagged(b"d")[-1].startswith((b"d BAD", b"d NO"))
