"""The bare CR/LF policy for DATA and BDAT (``smtp.bare_newline``)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.message.newlines import BareNewlines
from tests.message.test_crlf import chunked

pieces = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b".", b"\r\n\r\n"]),
                  max_size=40).map(b"".join)


def bare(data: bytes) -> str | None:
    """Reference: the first bare line end in the whole message, or None."""
    for i, octet in enumerate(data):
        if octet == 13 and data[i + 1:i + 2] != b"\n":
            return "<CR>"
        if octet == 10 and data[i - 1:i] != b"\r":
            return "<LF>"
    return None


@settings(max_examples=400, deadline=None)
@given(pieces, st.lists(st.integers(0, 200), max_size=8))
def test_reject_finds_a_bare_line_end_in_any_chunking(data, points):
    policy = BareNewlines("reject")
    out = b"".join(policy.feed(c) for c in chunked(data, points))
    policy.finish()
    assert out == data  # reject never changes what it passes
    assert policy.found == bare(data)


@settings(max_examples=300, deadline=None)
@given(pieces, st.lists(st.integers(0, 200), max_size=8))
def test_normalize_leaves_none_in_any_chunking(data, points):
    policy = BareNewlines("normalize")
    out = b"".join(policy.feed(c) for c in chunked(data, points))
    policy.finish()
    assert policy.found is None and bare(out) is None


def test_the_smuggling_pattern():
    body = b"Subject: x\r\n\r\nhi\r.\rMAIL FROM:<ceo@a.test>\r\n"
    reject = BareNewlines("reject")
    reject.feed(body)
    assert reject.found == "<CR>"
    assert BareNewlines().feed(body).count(b"\r\n.\r\n") == 1


def test_cr_split_from_its_lf_is_not_bare_but_a_final_cr_is():
    policy = BareNewlines("reject")
    policy.feed(b"a\r")
    policy.feed(b"\nb\r")
    assert policy.found is None
    policy.finish()
    assert policy.found == "<CR>"


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError):
        BareNewlines("ignore")  # type: ignore[arg-type]
