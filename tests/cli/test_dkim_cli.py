"""``mailhost dkim keygen``: a 0600 key that signs, and the exact record that verifies it."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import pytest
import pytest_twisted

from mailhost.mailauth.dkim import DKIMSigner, DKIMVerifier
from mailhost.mailauth.dkim_keys import load_key

MAILHOST = os.path.join(os.path.dirname(sys.executable), "mailhost")


def keygen(cwd, *args):
    return subprocess.run([sys.executable, MAILHOST, "dkim", "keygen", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def zone_txt(stdout: str) -> tuple[str, str]:
    line = next(x for x in stdout.splitlines() if " IN TXT " in x)
    name = line.split()[0].rstrip(".")
    strings = re.findall(r'"([^"]*)"', line)
    assert all(len(s) <= 255 for s in strings)
    return name, "".join(strings)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
@pytest_twisted.ensureDeferred
async def test_keygen_writes_a_private_key_and_prints_the_record(tmp_path, dns_server, algorithm):
    proc = keygen(tmp_path, "--domain", "Example.TEST", "--selector", "2026a", "--algorithm", algorithm)
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "mailhost-data" / "dkim" / "example.test" / "2026a.pem"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    name, record = zone_txt(proc.stdout)
    assert name == "2026a._domainkey.example.test"
    assert record.startswith(f"v=DKIM1; k={algorithm}; p=")
    # The printed record verifies what the written key signs.
    from mailhost.dns import StubLookup

    dns_server.zones[name] = {"TXT": [record]}
    key = load_key("example.test", "2026a", str(path))
    message = b"From: a@example.test\r\nSubject: x\r\n\r\nbody\r\n"
    signed = DKIMSigner([key]).sign(message, "example.test") + message
    [result] = await DKIMVerifier(StubLookup([dns_server.address])).verify(signed)
    assert result.result == "pass"
    again = keygen(tmp_path, "--domain", "example.test", "--selector", "2026a")
    assert again.returncode == 1 and "exists" in again.stderr  # never overwrites a key


def test_keygen_refuses_short_rsa_keys(tmp_path):
    proc = keygen(tmp_path, "--domain", "example.test", "--selector", "s", "--bits", "1024")
    assert proc.returncode == 2 and "2048" in proc.stderr
