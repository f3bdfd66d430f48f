"""The one CRLF normaliser: the wire's rule (default) and the store's (bare CR kept)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.message.crlf import CRLFNormalizer

pieces = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b".", b"\r\r\n", b"\n\r"]),
                  max_size=40).map(b"".join)
cuts = st.lists(st.integers(0, 200), max_size=8)


def chunked(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({min(c, len(data)) for c in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(marks, marks[1:], strict=False)]


@settings(max_examples=300, deadline=None)
@given(pieces, cuts)
def test_default_rule_leaves_no_bare_cr_or_lf_for_any_chunking(data, points):
    whole = CRLFNormalizer().feed(data)
    norm = CRLFNormalizer()
    assert b"".join(norm.feed(c) for c in chunked(data, points)) == whole
    assert whole == data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    assert norm.final_crlf() == (b"\r\n" if whole and not whole.endswith(b"\r\n") else b"")


@settings(max_examples=300, deadline=None)
@given(pieces, cuts)
def test_store_rule_keeps_bare_cr_for_any_chunking(data, points):
    whole = CRLFNormalizer(keep_bare_cr=True).feed(data)
    norm = CRLFNormalizer(keep_bare_cr=True)
    assert b"".join(norm.feed(c) for c in chunked(data, points)) == whole
    assert b"\n" not in whole.replace(b"\r\n", b"")
    assert whole.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")


def test_the_smuggling_pattern_under_each_rule():
    body = b"x\r.\rMAIL FROM:<ceo@a.test>\r\n"
    assert CRLFNormalizer().feed(body) == b"x\r\n.\r\nMAIL FROM:<ceo@a.test>\r\n"
    assert CRLFNormalizer(keep_bare_cr=True).feed(body) == body
