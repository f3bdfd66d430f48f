"""Plaintext credentials are refused without TLS and accepted over it.

The host runs with ``allow_plaintext_auth = "no"`` (the production default), so even
loopback clients must encrypt first. Every plaintext mechanism of every protocol is
tried in the clear, with the right password: it must be refused, and it must be
accepted once the same connection has done STARTTLS/STLS.
"""

from __future__ import annotations

import base64
import ssl

import pytest

from tests.security.hosts import PASSWORD, USER
from tests.security.wire import Wire


def ctx(host) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=host.cafile)


def b64(s: str) -> bytes:
    return base64.b64encode(s.encode())


PLAIN = b64(f"\0{USER}\0{PASSWORD}")


# -- SMTP ----------------------------------------------------------------------------


def smtp_ehlo(w: Wire) -> bytes:
    w.send(b"EHLO client.test\r\n")
    return b"".join(w.smtp_reply())


@pytest.mark.parametrize("kind", ["smtp", "submission"])
def test_smtp_does_not_advertise_auth_before_tls(tls_host, kind):
    with Wire(tls_host.ports[kind]) as w:
        w.line()
        ehlo = smtp_ehlo(w)
        assert b"STARTTLS" in ehlo
        assert b"AUTH" not in ehlo


@pytest.mark.parametrize("kind", ["smtp", "submission"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtp_plaintext_auth_refused_in_the_clear(tls_host, kind, mechanism):
    with Wire(tls_host.ports[kind]) as w:
        w.line()
        smtp_ehlo(w)
        if mechanism == "PLAIN":
            w.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
        else:
            w.send(b"AUTH LOGIN\r\n")
        reply = w.smtp_reply()[-1]
        # 538 5.7.11 (RFC 4954) or 530/503/504: any refusal, but never a challenge.
        assert reply[:1] == b"5", reply
        w.send(b"MAIL FROM:<alice@example.test>\r\n")
        w.smtp_reply()
        w.send(b"RCPT TO:<someone@remote.example>\r\n")
        assert not w.smtp_reply()[-1].startswith(b"250"), "unauthenticated relay"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtp_plaintext_auth_accepted_over_tls(tls_host, mechanism):
    with Wire(tls_host.ports["submission"]) as w:
        w.line()
        smtp_ehlo(w)
        w.send(b"STARTTLS\r\n")
        assert w.line().startswith(b"220 ")
        w.starttls(ctx(tls_host))
        ehlo = smtp_ehlo(w)
        assert b"AUTH" in ehlo and b"PLAIN" in ehlo and b"LOGIN" in ehlo
        if mechanism == "PLAIN":
            w.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
        else:
            w.send(b"AUTH LOGIN\r\n")
            assert w.line().startswith(b"334 ")
            w.send(b64(USER) + b"\r\n")
            assert w.line().startswith(b"334 ")
            w.send(b64(PASSWORD) + b"\r\n")
        assert w.smtp_reply()[-1].startswith(b"235 ")


# -- POP3 ----------------------------------------------------------------------------


def test_pop3_user_pass_refused_in_the_clear(tls_host):
    with Wire(tls_host.ports["pop3"]) as w:
        w.line()
        w.send(b"CAPA\r\n")
        capa = w.until(lambda ln: ln == b".\r\n")
        assert b"USER\r\n" not in capa and not any(ln.startswith(b"SASL") for ln in capa)
        w.send(b"USER " + USER.encode() + b"\r\n")
        assert w.line().startswith(b"-ERR")
        w.send(b"PASS " + PASSWORD.encode() + b"\r\n")
        assert w.line().startswith(b"-ERR")
        w.send(b"STAT\r\n")
        assert w.line().startswith(b"-ERR")


@pytest.mark.parametrize("initial", [True, False])
def test_pop3_auth_plain_refused_in_the_clear(tls_host, initial):
    with Wire(tls_host.ports["pop3"]) as w:
        w.line()
        w.send(b"AUTH PLAIN " + PLAIN + b"\r\n" if initial else b"AUTH PLAIN\r\n")
        reply = w.line()
        assert reply.startswith(b"-ERR"), reply  # never a "+ " challenge
        w.send(b"STAT\r\n")
        assert w.line().startswith(b"-ERR")


@pytest.mark.parametrize("how", ["USER", "AUTH"])
def test_pop3_login_accepted_over_stls(tls_host, how):
    with Wire(tls_host.ports["pop3"]) as w:
        w.line()
        w.send(b"STLS\r\n")
        assert w.line().startswith(b"+OK")
        w.starttls(ctx(tls_host))
        if how == "USER":
            w.send(b"USER " + USER.encode() + b"\r\n")
            assert w.line().startswith(b"+OK")
            w.send(b"PASS " + PASSWORD.encode() + b"\r\n")
        else:
            w.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
        assert w.line().startswith(b"+OK")
        w.send(b"QUIT\r\n")
        assert w.line().startswith(b"+OK")


# -- IMAP ----------------------------------------------------------------------------


def test_imap_advertises_logindisabled_in_the_clear(tls_host):
    with Wire(tls_host.ports["imap"]) as w:
        greeting = w.line()
        w.send(b"a CAPABILITY\r\n")
        caps = b"".join(w.tagged(b"a"))
        for text in (greeting, caps):
            assert b"LOGINDISABLED" in text
            assert b"AUTH=PLAIN" not in text


def test_imap_login_refused_in_the_clear(tls_host):
    with Wire(tls_host.ports["imap"]) as w:
        w.line()
        w.send(b"a LOGIN " + USER.encode() + b" " + PASSWORD.encode() + b"\r\n")
        assert w.tagged(b"a")[-1].startswith((b"a NO", b"a BAD"))
        w.send(b"b SELECT INBOX\r\n")
        assert w.tagged(b"b")[-1].startswith((b"b NO", b"b BAD"))


@pytest.mark.parametrize("initial", [True, False])
def test_imap_authenticate_plain_refused_in_the_clear(tls_host, initial):
    with Wire(tls_host.ports["imap"]) as w:
        w.line()
        if initial:
            w.send(b"a AUTHENTICATE PLAIN " + PLAIN + b"\r\n")
        else:
            w.send(b"a AUTHENTICATE PLAIN\r\n")
        reply = w.line()
        # Refused at once: the server must not ask for the credentials.
        assert reply.startswith((b"a NO", b"a BAD")), reply
        w.send(b"b SELECT INBOX\r\n")
        assert w.tagged(b"b")[-1].startswith((b"b NO", b"b BAD"))


@pytest.mark.parametrize("how", ["LOGIN", "AUTHENTICATE"])
def test_imap_login_accepted_over_starttls(tls_host, how):
    with Wire(tls_host.ports["imap"]) as w:
        w.line()
        w.send(b"a STARTTLS\r\n")
        assert w.tagged(b"a")[-1].startswith(b"a OK")
        w.starttls(ctx(tls_host))
        if how == "LOGIN":
            w.send(b"b LOGIN " + USER.encode() + b" " + PASSWORD.encode() + b"\r\n")
        else:
            w.send(b"b AUTHENTICATE PLAIN\r\n")
            assert w.line().startswith(b"+")
            w.send(PLAIN + b"\r\n")
        assert w.tagged(b"b")[-1].startswith(b"b OK")
        w.send(b"c SELECT INBOX\r\n")
        assert w.tagged(b"c")[-1].startswith(b"c OK")
