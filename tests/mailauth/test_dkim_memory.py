"""A 50 MB message is signed and verified in bounded memory (issue 15: RSS growth
< 20 MB): the body streams through in 1 MiB chunks and is never held whole.

Measured in a fresh interpreter, as the growth of its peak RSS (``ru_maxrss``)
from just before the first chunk to after the verification."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r'''
import resource
from twisted.internet.defer import Deferred
from mailhost.mailauth.dkim import DKIMSigner, DKIMVerifier
from mailhost.mailauth.dkim_keys import generate_pem, key_from_pem
from mailhost.testing.dns import StaticLookup

keys = [key_from_pem("example.test", s, generate_pem(a)) for s, a in (("r", "rsa"), ("e", "ed25519"))]
lookup = StaticLookup({f"{k.selector}._domainkey.example.test": {"TXT": [k.public_record]} for k in keys})
HEAD = b"From: a@example.test\r\nTo: b@example.net\r\nSubject: big\r\n\r\n"
LINE = b"0123456789 abcdefghij  klmnopqrstuvwxyz\tABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n"
CHUNK = LINE * (1024 * 1024 // len(LINE))
COUNT = 50 * 1024 * 1024 // len(CHUNK) + 1
# Warm up every code path on a small message first, so the baseline has them loaded.
for count in (1, COUNT):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    signing = DKIMSigner(keys).start(HEAD, "example.test")
    for _ in range(count):
        signing.update(CHUNK)
    signatures = signing.finish()
    verification = DKIMVerifier(lookup).start(signatures + HEAD)
    for _ in range(count):
        verification.update(CHUNK)
    out = []
    Deferred.fromCoroutine(verification.finish()).addBoth(out.append)
    assert [r.result for r in out[0]] == ["pass", "pass"], out
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(count * len(CHUNK), after - before)
'''


def test_fifty_megabytes_in_bounded_memory():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    size, growth_kib = map(int, proc.stdout.split())
    assert size >= 50 * 1024 * 1024
    assert growth_kib < 20 * 1024, f"RSS grew by {growth_kib} KiB"
