"""Keys made once per test session (RSA-2048 generation takes a while)."""

from __future__ import annotations

import pytest

from mailhost.mailauth.dkim_keys import generate_pem, key_from_pem


@pytest.fixture(scope="session")
def rsa_key():
    return key_from_pem("example.test", "rsa1", generate_pem("rsa"))


@pytest.fixture(scope="session")
def ed_key():
    return key_from_pem("example.test", "ed1", generate_pem("ed25519"))


@pytest.fixture
def lookup(dns_server):
    from mailhost.dns import StubLookup

    return StubLookup([dns_server.address], timeout=1.0)


def publish(dns_server, *keys):
    for key in keys:
        dns_server.zones[f"{key.selector}._domainkey.{key.domain}"] = {"TXT": [key.public_record]}
