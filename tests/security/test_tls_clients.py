"""STARTTLS and implicit TLS with clients nobody here wrote, each verifying our cert.

swaks, curl and ``openssl s_client`` run as subprocesses; imaplib, poplib and smtplib
use ``ssl.create_default_context(cafile=...)``, so hostname and chain are checked.
Each client also authenticates: the server runs with ``allow_plaintext_auth = "no"``,
so a login that succeeds proves the session really was encrypted.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import ssl
import subprocess

import pytest

from tests.security.hosts import HOST, PASSWORD, USER

TIMEOUT = 30


def run(args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(args, input=stdin, capture_output=True, timeout=TIMEOUT)


def out(p: subprocess.CompletedProcess) -> str:
    return (p.stdout + p.stderr).decode("utf-8", "replace")


def context(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


# -- swaks -------------------------------------------------------------------------


def swaks(port: int, *extra: str) -> subprocess.CompletedProcess:
    return run(["swaks", "--server", HOST, "--port", str(port), "--helo", "client.test",
                "--from", USER, "--to", "bob@example.test", "--timeout", "20", *extra])


def test_swaks_starttls_submission_verified_with_auth(tls_host):
    p = swaks(tls_host.ports["submission"], "--tls", "--tls-verify",
              "--tls-ca-path", tls_host.cafile,
              "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD)
    assert p.returncode == 0, out(p)
    assert "TLS started" in out(p)
    assert "235 " in out(p) and "250 " in out(p)


def test_swaks_starttls_inbound_smtp_verified(tls_host):
    p = swaks(tls_host.ports["smtp"], "--tls", "--tls-verify", "--tls-ca-path", tls_host.cafile)
    assert p.returncode == 0, out(p)
    assert "TLS started" in out(p)


def test_swaks_implicit_tls_submission_verified_with_auth(tls_host):
    p = swaks(tls_host.tls_ports["submission"], "--tls-on-connect", "--tls-verify",
              "--tls-ca-path", tls_host.cafile,
              "--auth", "LOGIN", "--auth-user", USER, "--auth-password", PASSWORD)
    assert p.returncode == 0, out(p)
    assert "235 " in out(p)


def test_swaks_verification_is_real(tls_host):
    """Control: with the system CAs instead of ours, verification must fail."""
    p = swaks(tls_host.ports["submission"], "--tls", "--tls-verify",
              "--tls-ca-path", "/etc/ssl/certs")
    assert p.returncode != 0, out(p)


# -- curl --------------------------------------------------------------------------


def curl(url: str, cafile: str, *extra: str) -> subprocess.CompletedProcess:
    return run(["curl", "-sS", "--max-time", "20", "--cacert", cafile,
                "-u", f"{USER}:{PASSWORD}", url, *extra])


@pytest.mark.parametrize("scheme,kind", [("imap", "imap"), ("pop3", "pop3")])
def test_curl_ssl_reqd_starttls(tls_host, scheme, kind):
    p = curl(f"{scheme}://{HOST}:{tls_host.ports[kind]}/", tls_host.cafile, "--ssl-reqd")
    assert p.returncode == 0, out(p)


@pytest.mark.parametrize("scheme,kind", [("imaps", "imap"), ("pop3s", "pop3")])
def test_curl_implicit_tls(tls_host, scheme, kind):
    p = curl(f"{scheme}://{HOST}:{tls_host.tls_ports[kind]}/", tls_host.cafile)
    assert p.returncode == 0, out(p)


@pytest.mark.parametrize("scheme,implicit", [("smtp", False), ("smtps", True)])
def test_curl_smtp_submission(tls_host, tmp_path, scheme, implicit):
    msg = tmp_path / "m.eml"
    msg.write_bytes(b"From: alice@example.test\r\nTo: bob@example.test\r\n"
                    b"Subject: curl over TLS\r\n\r\nhello\r\n")
    port = tls_host.tls_ports["submission"] if implicit else tls_host.ports["submission"]
    extra = [] if implicit else ["--ssl-reqd"]
    p = curl(f"{scheme}://{HOST}:{port}", tls_host.cafile, *extra,
             "--mail-from", USER, "--mail-rcpt", "bob@example.test",
             "--upload-file", str(msg))
    assert p.returncode == 0, out(p)


def test_curl_verification_is_real(tls_host):
    p = run(["curl", "-sS", "--max-time", "20", "--cacert", "/etc/ssl/certs/ca-certificates.crt",
             f"imaps://{HOST}:{tls_host.tls_ports['imap']}/", "-u", f"{USER}:{PASSWORD}"])
    assert p.returncode == 60, out(p)  # CURLE_PEER_FAILED_VERIFICATION


# -- openssl s_client --------------------------------------------------------------


@pytest.mark.parametrize("proto,kind", [("smtp", "smtp"), ("smtp", "submission"),
                                        ("pop3", "pop3"), ("imap", "imap")])
def test_openssl_starttls_verifies(tls_host, proto, kind):
    p = run(["openssl", "s_client", "-connect", f"{HOST}:{tls_host.ports[kind]}",
             "-starttls", proto, "-verify_return_error", "-CAfile", tls_host.cafile,
             "-verify_hostname", "mx.test"])
    assert p.returncode == 0, out(p)
    assert "Verify return code: 0 (ok)" in out(p)
    assert "New, TLSv1.3" in out(p) or "New, TLSv1.2" in out(p)


@pytest.mark.parametrize("kind", ["submission", "pop3", "imap"])
def test_openssl_implicit_tls_verifies(tls_host, kind):
    p = run(["openssl", "s_client", "-connect", f"{HOST}:{tls_host.tls_ports[kind]}",
             "-verify_return_error", "-CAfile", tls_host.cafile, "-verify_hostname", "mx.test"])
    assert p.returncode == 0, out(p)
    assert "Verify return code: 0 (ok)" in out(p)


def _old_tls(args: list[str]) -> subprocess.CompletedProcess:
    # SECLEVEL=0 so that it is the server, not this client's own policy, that refuses.
    return run(["openssl", "s_client", *args, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])


@pytest.mark.parametrize("kind", ["submission", "pop3", "imap"])
def test_tls_1_1_refused_on_implicit_tls(tls_host, kind):
    p = _old_tls(["-connect", f"{HOST}:{tls_host.tls_ports[kind]}"])
    assert p.returncode != 0, out(p)
    assert "Cipher is (NONE)" in out(p), out(p)


@pytest.mark.parametrize("proto,kind", [("smtp", "smtp"), ("pop3", "pop3"), ("imap", "imap")])
def test_tls_1_1_refused_on_starttls(tls_host, proto, kind):
    p = _old_tls(["-connect", f"{HOST}:{tls_host.ports[kind]}", "-starttls", proto])
    assert p.returncode != 0, out(p)
    assert "Cipher is (NONE)" in out(p), out(p)


def test_tls_1_1_client_works_against_a_tls_1_1_server(tls_host):
    """Control for the tests above: this client can speak TLS 1.1 at all."""
    import time

    from tests.mailhost_process import free_port

    port = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"{HOST}:{port}", "-cert", tls_host.cafile,
         "-key", tls_host.keyfile, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            time.sleep(0.1)
            p = _old_tls(["-connect", f"{HOST}:{port}"])
            if "connect:errno" not in out(p):
                break
        assert "Protocol  : TLSv1.1" in out(p) and "Cipher is (NONE)" not in out(p), out(p)
    finally:
        server.kill()
        server.wait(10)


# -- Python's standard library clients ---------------------------------------------


def test_imaplib_imap4_ssl(tls_host):
    with imaplib.IMAP4_SSL(HOST, tls_host.tls_ports["imap"], ssl_context=context(tls_host.cafile),
                           timeout=TIMEOUT) as imap:
        assert imap.login(USER, PASSWORD)[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"


def test_imaplib_starttls(tls_host):
    with imaplib.IMAP4(HOST, tls_host.ports["imap"], timeout=TIMEOUT) as imap:
        assert "LOGINDISABLED" in imap.capabilities
        imap.starttls(ssl_context=context(tls_host.cafile))
        assert "LOGINDISABLED" not in imap.capabilities
        assert imap.login(USER, PASSWORD)[0] == "OK"


def test_poplib_pop3_ssl(tls_host):
    pop = poplib.POP3_SSL(HOST, tls_host.tls_ports["pop3"], context=context(tls_host.cafile),
                          timeout=TIMEOUT)
    try:
        pop.user(USER)
        assert pop.pass_(PASSWORD).startswith(b"+OK")
        pop.stat()
    finally:
        pop.quit()


def test_poplib_stls(tls_host):
    pop = poplib.POP3(HOST, tls_host.ports["pop3"], timeout=TIMEOUT)
    try:
        pop.stls(context=context(tls_host.cafile))
        pop.user(USER)
        assert pop.pass_(PASSWORD).startswith(b"+OK")
    finally:
        pop.quit()


def test_smtplib_smtp_ssl(tls_host):
    with smtplib.SMTP_SSL(HOST, tls_host.tls_ports["submission"],
                          context=context(tls_host.cafile), timeout=TIMEOUT) as smtp:
        smtp.login(USER, PASSWORD)
        refused = smtp.sendmail(USER, ["bob@example.test"],
                                b"Subject: smtps\r\n\r\nhello over implicit TLS\r\n")
        assert refused == {}


def test_smtplib_starttls(tls_host):
    with smtplib.SMTP(HOST, tls_host.ports["submission"], timeout=TIMEOUT) as smtp:
        smtp.ehlo("client.test")
        assert not smtp.has_extn("auth")
        smtp.starttls(context=context(tls_host.cafile))
        smtp.ehlo("client.test")
        assert smtp.has_extn("auth")
        smtp.login(USER, PASSWORD)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_python_client_refuses_tls_1_1_server_side(tls_host):
    ctx = context(tls_host.cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        imaplib.IMAP4_SSL(HOST, tls_host.tls_ports["imap"], ssl_context=ctx, timeout=TIMEOUT)
