"""The streamed DKIM body hash equals dkimpy's, chunked any way (hypothesis)."""

from __future__ import annotations

import hashlib

from dkim.canonicalization import Relaxed, Simple
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.mailauth import dkim_body
from mailhost.mailauth.dkim_body import BodyHasher

bodies = st.lists(st.sampled_from([b"a", b"b c", b" ", b"\t", b"\r\n", b"\n", b"\r", b"x  \t y", b""]),
                  max_size=40).map(b"".join)


def dkimpy_hash(body: bytes, canon: str, limit: int | None = None) -> bytes:
    # dkimpy's rfc822_parse turns CRLF and bare LF alike into CRLF.
    import re

    body = b"\r\n".join(re.split(b"\r?\n", body))
    canonical = (Relaxed if canon == "relaxed" else Simple).canonicalize_body(body)
    if limit is not None:
        canonical = canonical[:limit]
    return hashlib.sha256(canonical).digest()


@settings(max_examples=400, deadline=None)
@given(body=bodies, canon=st.sampled_from(["simple", "relaxed"]),
       cuts=st.lists(st.integers(0, 400), max_size=6), limit=st.none() | st.integers(0, 50),
       held=st.sampled_from([3, 8, 64 * 1024]))
def test_streamed_hash_equals_dkimpy(body, canon, cuts, limit, held):
    old = dkim_body.MAX_HELD
    dkim_body.MAX_HELD = held  # small: exercises the cutting of long lines
    try:
        h = BodyHasher(canon, limit=limit)
        start = 0
        for cut in sorted(set(min(c, len(body)) for c in cuts)):
            h.update(body[start:cut])
            start = cut
        h.update(body[start:])
        assert h.digest() == dkimpy_hash(body, canon, limit)
    finally:
        dkim_body.MAX_HELD = old


def test_long_line_memory_is_bounded():
    h = BodyHasher("relaxed")
    chunk = b"x  y\t" * 20000
    for _ in range(50):
        h.update(chunk)
        assert len(h._held) <= dkim_body.MAX_HELD
    h.update(b"\r\n")
    assert h.digest() == dkimpy_hash(chunk * 50 + b"\r\n", "relaxed")


def test_cut_before_a_split_crlf_leaves_no_trailing_blank():
    """A long line cut just before a CR whose LF comes in the next chunk: the blank
    before the CR is trailing whitespace (relaxed drops it), not body (found by a
    fuzz run of 60,000 inputs; hypothesis had not met it)."""
    old = dkim_body.MAX_HELD
    dkim_body.MAX_HELD = 3
    try:
        for canon in ("relaxed", "simple"):
            h = BodyHasher(canon)
            h.update(b" y\t\r")
            h.update(b"\n")
            assert h.digest() == dkimpy_hash(b" y\t\r\n", canon), canon
    finally:
        dkim_body.MAX_HELD = old
