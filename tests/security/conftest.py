"""Fixtures: one TLS-enabled ``twistd mailhost`` per test module (strict plaintext policy)."""

from __future__ import annotations

import pytest

from tests.security.hosts import TLSHost


@pytest.fixture(scope="module")
def tls_host(tmp_path_factory):
    """A running mail host with TLS everywhere and ``allow_plaintext_auth = "no"``."""
    host = TLSHost(str(tmp_path_factory.mktemp("tlshost"))).start()
    yield host
    host.kill()
