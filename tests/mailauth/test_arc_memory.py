"""A 50 MB message is sealed and its chain verified in bounded memory (as DKIM's,
``test_dkim_memory.py``): dkimpy sees only the header block, the AMS body hashes
stream. Peak RSS growth of a fresh interpreter, measured as there."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r'''
import resource
from twisted.internet.defer import Deferred
from mailhost.mailauth.arc import ARCSealer, ARCVerifier
from mailhost.mailauth.dkim_keys import generate_pem, key_from_pem
from mailhost.testing.dns import StaticLookup

key = key_from_pem("example.test", "arc", generate_pem("rsa"))
lookup = StaticLookup({"arc._domainkey.example.test": {"TXT": [key.public_record]}})
HEAD = b"From: a@example.test\r\nTo: b@example.net\r\nSubject: big\r\n\r\n"
LINE = b"0123456789 abcdefghij  klmnopqrstuvwxyz\tABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n"
CHUNK = LINE * (1024 * 1024 // len(LINE))
COUNT = 50 * 1024 * 1024 // len(CHUNK) + 1
for count in (1, COUNT):  # warm every code path up first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sealing = ARCSealer(key).start()
    for _ in range(count):
        sealing.update(CHUNK)
    arc_set = sealing.finish(HEAD, "mx.example.test", b"spf=pass smtp.mailfrom=a@example.test", "none")
    verification = ARCVerifier(lookup).start(arc_set + HEAD)
    for _ in range(count):
        verification.update(CHUNK)
    out = []
    Deferred.fromCoroutine(verification.finish()).addBoth(out.append)
    assert out[0].result == "pass", out
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(count * len(CHUNK), after - before)
'''


def test_fifty_megabytes_sealed_and_verified_in_bounded_memory():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    size, growth_kib = map(int, proc.stdout.split())
    assert size >= 50 * 1024 * 1024
    assert growth_kib < 20 * 1024, f"RSS grew by {growth_kib} KiB"
