"""Submission, AUTH and STARTTLS over real loopback sockets."""

from __future__ import annotations

import base64
import smtplib
import ssl

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from mailhost.auth.throttle import LoginThrottle
from tests.smtp.conftest import RawClient


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


@pytest_twisted.ensureDeferred
async def test_submission_requires_auth_and_owned_sender(smtp_host):
    host = smtp_host(submission=True)

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        out = [c.cmd(b"MAIL FROM:<alice@example.test>"),
               c.cmd(b"AUTH PLAIN " + b64(b"\0alice@example.test\0secret")),
               c.cmd(b"MAIL FROM:<bob@example.test>"),
               c.cmd(b"MAIL FROM:<>"),
               c.cmd(b"MAIL FROM:<info@example.test>"),
               c.cmd(b"RCPT TO:<bob@example.test>"),
               c.cmd(b"RCPT TO:<far@elsewhere.test> NOTIFY=FAILURE"),
               c.cmd(b"DATA")]
        c.send(b"Subject: s\r\n\r\nbody\r\n.\r\n")
        out.append(c.reply())
        return out

    (unauth, auth, not_owned, null, alias, local, remote, data,
     final) = await deferToThread(session)
    assert unauth == b"530 5.7.0 Authentication required"
    assert auth.startswith(b"235 2.7.0")
    assert not_owned.startswith(b"553 5.7.1") and b"not owned by user" in not_owned
    assert null.startswith(b"553 5.7.1")
    assert alias.startswith(b"250")
    assert local.startswith(b"250") and remote.startswith(b"250")
    assert data.startswith(b"354") and final.startswith(b"250 2.0.0")
    (bob,) = await host.read_messages("bob@example.test")
    assert b"with ESMTPA id" in bob and b"Return-Path: <info@example.test>" in bob
    (sender, rcpts, queued), = host.queue.committed
    assert sender == "info@example.test"
    assert [(r.address, r.notify) for r in rcpts] == [("far@elsewhere.test",
                                                       frozenset({"FAILURE"}))]
    assert queued.startswith(b"Received: ") and queued.endswith(b"Subject: s\r\n\r\nbody\r\n")


@pytest_twisted.ensureDeferred
async def test_submission_smtplib_login(smtp_host):
    host = smtp_host(submission=True)

    def session():
        with smtplib.SMTP("127.0.0.1", host.port, timeout=10) as s:
            s.ehlo("laptop")
            s.login("bob@example.test", "hunter2")  # smtplib picks CRAM-MD5? no: PLAIN/LOGIN
            return s.sendmail("bob@example.test", ["alice@example.test", "x@elsewhere.test"],
                              b"Subject: via smtplib\r\n\r\nhi\r\n")

    assert await deferToThread(session) == {}
    assert len(await host.read_messages("alice@example.test")) == 1
    assert len(host.queue.committed) == 1


@pytest_twisted.ensureDeferred
async def test_submission_without_sender_enforcement(smtp_host):
    host = smtp_host(submission=True, enforce_sender=False)

    def session():
        with smtplib.SMTP("127.0.0.1", host.port, timeout=10) as s:
            s.login("bob@example.test", "hunter2")
            return s.sendmail("someone@else.test", ["alice@example.test"], b"Subject: x\r\n\r\n")

    assert await deferToThread(session) == {}


@pytest_twisted.ensureDeferred
async def test_auth_mechanisms_and_failures(smtp_host):
    host = smtp_host()

    def session():
        out = {}
        c = RawClient(host.port)
        out["before_ehlo"] = c.cmd(b"AUTH PLAIN")
        c.cmd(b"EHLO c")
        out["unknown_mech"] = c.cmd(b"AUTH CRAM-MD5")
        out["plain_challenge"] = c.cmd(b"AUTH PLAIN")
        out["plain_cancel"] = c.cmd(b"*")
        out["bad_b64"] = c.cmd(b"AUTH PLAIN !!!!")
        out["wrong_pw"] = c.cmd(b"AUTH PLAIN " + b64(b"\0alice@example.test\0nope"))
        out["login_user"] = c.cmd(b"AUTH LOGIN")
        out["login_pass"] = c.cmd(b64(b"alice@example.test"))
        out["login_ok"] = c.cmd(b64(b"secret"))
        out["again"] = c.cmd(b"AUTH PLAIN " + b64(b"\0alice@example.test\0secret"))
        c2 = RawClient(host.port)
        c2.cmd(b"EHLO c")
        c2.cmd(b"AUTH PLAIN")
        out["plain_two_step"] = c2.cmd(b64(b"\0bob@example.test\0hunter2"))
        c3 = RawClient(host.port)
        c3.cmd(b"EHLO c")
        out["login_initial"] = c3.cmd(b"AUTH LOGIN " + b64(b"carol@example.test"))
        out["login_initial_ok"] = c3.cmd(b64(b"pw3"))
        return out

    r = await deferToThread(session)
    assert r["before_ehlo"].startswith(b"503 5.5.1")
    assert r["unknown_mech"].startswith(b"504 5.5.4")
    assert r["plain_challenge"] == b"334 "
    assert r["plain_cancel"].startswith(b"501")
    assert r["bad_b64"].startswith(b"501 5.5.2")
    assert r["wrong_pw"].startswith(b"535 5.7.8")
    assert r["login_user"] == b"334 VXNlcm5hbWU6"
    assert r["login_pass"] == b"334 UGFzc3dvcmQ6"
    assert r["login_ok"].startswith(b"235 2.7.0")
    assert r["again"].startswith(b"503 5.5.1")
    assert r["plain_two_step"].startswith(b"235")
    assert r["login_initial"] == b"334 UGFzc3dvcmQ6"
    assert r["login_initial_ok"].startswith(b"235")


@pytest_twisted.ensureDeferred
async def test_auth_throttled_is_temporary(smtp_host):
    host = smtp_host(throttle=LoginThrottle(max_failures=1, window=60, lockout=60, max_delay=0))

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        first = c.cmd(b"AUTH PLAIN " + b64(b"\0alice@example.test\0bad"))
        second = c.cmd(b"AUTH PLAIN " + b64(b"\0alice@example.test\0secret"))
        return first, second

    first, second = await deferToThread(session)
    assert first.startswith(b"535 5.7.8")
    assert second.startswith(b"454 4.7.0")


@pytest_twisted.ensureDeferred
async def test_plaintext_auth_refused_without_tls(smtp_host):
    host = smtp_host(allow_plaintext="no", tls=True)

    def session():
        c = RawClient(host.port)
        ehlo = c.cmd(b"EHLO c")
        auth = c.cmd(b"AUTH PLAIN " + b64(b"\0alice@example.test\0secret"))
        c.cmd(b"STARTTLS")
        c.starttls(host.cafile)
        ehlo2 = c.cmd(b"EHLO c")
        auth2 = c.cmd(b"AUTH PLAIN " + b64(b"\0alice@example.test\0secret"))
        return ehlo, auth, ehlo2, auth2

    ehlo, auth, ehlo2, auth2 = await deferToThread(session)
    assert b"AUTH" not in ehlo and b"STARTTLS" in ehlo
    assert auth == b"538 5.7.11 Encryption required for requested authentication mechanism"
    assert b"AUTH PLAIN LOGIN" in ehlo2 and b"STARTTLS" not in ehlo2
    assert auth2.startswith(b"235")


@pytest_twisted.ensureDeferred
async def test_starttls_injection_is_discarded(smtp_host):
    """CVE-2011-0411: commands pipelined after STARTTLS in the same packet must not run."""
    host = smtp_host(tls=True)

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        c.send(b"STARTTLS\r\nHELP\r\nEHLO evil\r\nMAIL FROM:<evil@remote.test>\r\n")
        ready = c.reply()
        c.starttls(host.cafile)
        # After the handshake the first reply must answer our NOOP, not the injected HELP.
        noop = c.cmd(b"NOOP")
        mail = c.cmd(b"MAIL FROM:<a@remote.test>")
        return ready, noop, mail, c.buf

    ready, noop, mail, rest = await deferToThread(session)
    assert ready.startswith(b"220 2.0.0")
    assert noop == b"250 2.0.0 Ok"
    # HELO state was reset by the upgrade, and the injected EHLO and MAIL never ran.
    assert mail.startswith(b"503 5.5.1 Error: send HELO/EHLO first")
    assert rest == b""


@pytest_twisted.ensureDeferred
async def test_starttls_resets_state_and_second_starttls(smtp_host):
    host = smtp_host(tls=True)

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        c.cmd(b"AUTH PLAIN " + b64(b"\0alice@example.test\0secret"))
        c.cmd(b"STARTTLS")
        c.starttls(host.cafile)
        out = [c.cmd(b"MAIL FROM:<alice@example.test>"), c.cmd(b"EHLO c"),
               c.cmd(b"STARTTLS"), c.cmd(b"MAIL FROM:<s@remote.test>"),
               c.cmd(b"RCPT TO:<far@elsewhere.test>"), c.cmd(b"RCPT TO:<alice@example.test>"),
               c.cmd(b"DATA")]
        c.send(b"Subject: tls\r\n\r\nx\r\n.\r\n")
        out.append(c.reply())
        return out

    r = await deferToThread(session)
    assert r[0].startswith(b"503")  # HELO forgotten
    assert b"STARTTLS" not in r[1]
    assert r[2].startswith(b"503 5.5.1")  # second STARTTLS
    assert r[4].startswith(b"554 5.7.1")  # AUTH was forgotten: no relay
    assert r[5].startswith(b"250") and r[7].startswith(b"250")
    (stored,) = await host.read_messages()
    assert b"with ESMTPS id" in stored


@pytest_twisted.ensureDeferred
async def test_smtplib_starttls_submission(smtp_host):
    host = smtp_host(submission=True, tls=True, allow_plaintext="no")

    def session():
        ctx = ssl.create_default_context(cafile=host.cafile)
        with smtplib.SMTP("localhost", host.port, timeout=10) as s:
            s.starttls(context=ctx)
            s.login("alice@example.test", "secret")
            return s.sendmail("alice@example.test", ["bob@example.test"], b"Subject: t\r\n\r\nx\r\n")

    assert await deferToThread(session) == {}
    (stored,) = await host.read_messages("bob@example.test")
    assert b"with ESMTPSA id" in stored


@pytest.mark.parametrize("cmd", [b"STARTTLS", b"STARTTLS extra"])
@pytest_twisted.ensureDeferred
async def test_starttls_not_offered_without_certificate(smtp_host, cmd):
    host = smtp_host()

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        return c.cmd(cmd), c.cmd(b"NOOP")

    reply, noop = await deferToThread(session)
    assert reply.startswith(b"502 5.5.1") and noop.startswith(b"250")


@pytest_twisted.ensureDeferred
async def test_implicit_tls_listener(smtp_host, tmp_path):
    """Port 465 style: the whole session is TLS, so AUTH is offered and STARTTLS is not."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import SSL4ServerEndpoint

    from mailhost.config import TLSConfig
    from mailhost.tls import server_options
    from tests.smtp.conftest import _result

    host = smtp_host(submission=True, tls=True, allow_plaintext="no")
    host.factory.tls_options = None  # as service.py does for listen_tls listeners
    # Not an "ssl:" endpoint string: Twisted's parser hands pyOpenSSL's deprecated
    # X509/PKey objects to the context.
    endpoint = SSL4ServerEndpoint(
        reactor, 0, server_options(TLSConfig(cert=host.cafile, key=str(tmp_path / "key.pem"))),
        interface="127.0.0.1")
    listening = _result(endpoint.listen(host.factory))
    port = listening.getHost().port

    def session():
        ctx = ssl.create_default_context(cafile=host.cafile)
        with smtplib.SMTP_SSL("localhost", port, timeout=10, context=ctx) as s:
            code, ehlo = s.ehlo("laptop")
            starttls = s.docmd("STARTTLS")
            s.login("alice@example.test", "secret")
            refused = s.sendmail("alice@example.test", ["bob@example.test"], b"Subject: 465\r\n\r\n")
            return ehlo, starttls, refused

    try:
        ehlo, starttls, refused = await deferToThread(session)
    finally:
        await listening.stopListening()
    assert b"AUTH PLAIN LOGIN" in ehlo and b"STARTTLS" not in ehlo
    assert starttls[0] == 503
    assert refused == {}
    (stored,) = await host.read_messages("bob@example.test")
    assert b"with ESMTPSA id" in stored
