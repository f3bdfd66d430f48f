"""Independent implementations: OpenDKIM verifies our signatures, we verify OpenDKIM's.

RSA-2048 and Ed25519 (RFC 8463) both ways, keys from ``mailhost dkim keygen``'s
code, DNS from the loopback test server for both sides."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from mailhost.mailauth.dkim import DKIMSigner, DKIMVerifier
from mailhost.mailauth.dkim_keys import generate_pem, key_from_pem, write_key
from tests.mailauth import opendkim
from tests.mailauth.conftest import publish

MESSAGE = (b"From: Alice <alice@example.test>\r\n"
           b"To: bob@example.net\r\n"
           b"Subject: interop  test\r\n"
           b"Date: Fri, 04 Dec 2026 23:00:00 +0000\r\n"
           b"Message-ID: <interop@example.test>\r\n"
           b"\r\n"
           b"Hello Bob,\r\n\r\n  indented\tline   \r\nbye\r\n\r\n\r\n")


def test_opendkim_is_installed():
    assert os.access(opendkim.OPENDKIM, os.X_OK), "install Debian opendkim (see .ci/install)"


def make_key(tmp_path, algorithm, selector):
    pem = generate_pem(algorithm)
    path = str(tmp_path / f"{selector}.pem")
    write_key(path, pem)
    return key_from_pem("example.test", selector, pem), path


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
@pytest_twisted.ensureDeferred
async def test_opendkim_verifies_our_signature(tmp_path, dns_server, algorithm):
    key, _path = make_key(tmp_path, algorithm, f"ours-{algorithm}")
    publish(dns_server, key)
    message = DKIMSigner([key]).sign(MESSAGE, "example.test") + MESSAGE
    verdict = await deferToThread(opendkim.verify, str(tmp_path), message, dns_server.address[1])
    assert f"s=ours-{algorithm}, d=example.test" in verdict and "succeeded" in verdict, verdict
    tampered = message.replace(b"bye", b"BYE")
    verdict = await deferToThread(opendkim.verify, str(tmp_path), tampered, dns_server.address[1])
    assert "failed" in verdict, verdict


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
@pytest_twisted.ensureDeferred
async def test_we_verify_opendkims_signature(tmp_path, dns_server, lookup, algorithm):
    key, path = make_key(tmp_path, algorithm, f"theirs-{algorithm}")
    publish(dns_server, key)
    signer = opendkim.OpenDKIMSigner(str(tmp_path), "example.test", key.selector, path,
                                     key.signature_algorithm)
    try:
        header = await deferToThread(signer.sign, MESSAGE, "alice@example.test", "bob@example.net")
    finally:
        signer.stop()
    assert header.startswith(b"DKIM-Signature:") and key.signature_algorithm.encode() in header
    results = await DKIMVerifier(lookup).verify(header + MESSAGE)
    assert [(r.result, r.selector) for r in results] == [("pass", key.selector)], results
    results = await DKIMVerifier(lookup).verify(header + MESSAGE.replace(b"bye", b"BYE"))
    assert [r.result for r in results] == ["fail"]
