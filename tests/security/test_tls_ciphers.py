"""TLS 1.2 offers AEAD suites only, unless ``tls.ciphers = "legacy"`` (issue 17, item 14).

Before the fix the TLS 1.2 handshake accepted ECDHE-ECDSA-AES128-SHA and the other CBC
suites (obsolete, exposed to LUCKY13-style padding oracles). ``openssl s_client`` offers
exactly one suite: the CBC one must be refused, a GCM one accepted, on an implicit-TLS
port and after STARTTLS; with ``tls.ciphers = "legacy"`` the CBC suite is accepted again
(the control that shows the client can negotiate it).
"""

from __future__ import annotations

import subprocess

import pytest

from tests.security.hosts import HOST, TLSHost

CBC = "ECDHE-ECDSA-AES128-SHA"
GCM = "ECDHE-ECDSA-AES128-GCM-SHA256"


def s_client(port: int, cipher: str, starttls: str | None = None) -> tuple[bool, str]:
    args = ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-tls1_2",
            "-cipher", cipher, "-servername", "mx.test"]
    if starttls:
        args += ["-starttls", starttls]
    p = subprocess.run(args, input=b"", capture_output=True, timeout=30)
    text = (p.stdout + p.stderr).decode("utf-8", "replace")
    return p.returncode == 0 and f"Cipher is {cipher}" in text, text


@pytest.mark.parametrize("kind,starttls", [("imap", None), ("submission", None),
                                           ("pop3", None), ("smtp", "smtp")])
def test_tls12_cbc_suite_refused_gcm_accepted(tls_host, kind, starttls):
    port = tls_host.ports[kind] if starttls else tls_host.tls_ports[kind]
    ok, text = s_client(port, CBC, starttls)
    assert not ok, text
    ok, text = s_client(port, GCM, starttls)
    assert ok, text


@pytest.fixture(scope="module")
def legacy_host(tmp_path_factory):
    h = TLSHost(str(tmp_path_factory.mktemp("legacytls")), extra={"tls": {"ciphers": "legacy"}})
    h.start()
    yield h
    h.kill()


def test_legacy_setting_offers_cbc_again(legacy_host):
    ok, text = s_client(legacy_host.tls_ports["imap"], CBC)
    assert ok, text
