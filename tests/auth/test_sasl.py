"""SASL PLAIN decoding shared by the three protocols."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.auth.sasl import SASLError, decode_plain


def b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def test_plain_forms():
    assert decode_plain(b64(b"\0alice@x.test\0pw")) == ("alice@x.test", "pw")
    assert decode_plain(b64(b"Alice@X.test\0alice@x.test\0pw").decode()) == ("alice@x.test", "pw")


@pytest.mark.parametrize("response,kind", [
    (b"*", "cancelled"), (b"!!notbase64", "encoding"), (b"=", "malformed"),
    (b64(b"a\0b"), "malformed"), (b64(b"\0\0pw"), "malformed"),
    (b64(b"\0\xff\0pw"), "malformed"), (b64(b"bob@x\0alice@x\0pw"), "authzid"),
])
def test_bad_responses(response, kind):
    with pytest.raises(SASLError) as e:
        decode_plain(response)
    assert e.value.kind == kind


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_never_raises_anything_else(data):
    try:
        decode_plain(data)
    except SASLError:
        pass
