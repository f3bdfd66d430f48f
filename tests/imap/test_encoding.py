"""Response encoding helpers and the modified UTF-7 mailbox-name codec."""

import codecs

import pytest
import twisted.mail.imap4  # noqa: F401  (registers the imap4-utf-7 codec)
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.imap import encoding, mutf7
from mailhost.imap.parser import ParseError, parse_command


def test_astring_atom_quoted_literal():
    assert encoding.astring("INBOX") == b"INBOX"
    assert encoding.astring("[Gmail]/Sent") == b'"[Gmail]/Sent"'
    assert encoding.astring("a b") == b'"a b"'
    assert encoding.astring('say "hi"\\') == b'"say \\"hi\\"\\\\"'
    assert encoding.astring("") == b'""'
    assert encoding.astring("NIL") == b'"NIL"'
    assert encoding.astring(b"a\r\nb") == b"{4}\r\na\r\nb"
    assert encoding.astring("caf\u00e9") == b"{5}\r\ncaf\xc3\xa9"


def test_nstring_and_quote():
    assert encoding.nstring(None) == b"NIL"
    assert encoding.nstring(b"") == b'""'
    assert encoding.nstring(b"\xff\xfe") == b"{2}\r\n\xff\xfe"
    with pytest.raises(ValueError):
        encoding.quote(b"\n")


def test_flags_and_dates():
    assert encoding.format_flags(["foo", "\\Seen", "\\Answered"]) == b"(\\Answered \\Seen foo)"
    assert encoding.format_flags([]) == b"()"
    assert encoding.format_datetime(837571465) == b'"17-Jul-1996 02:44:25 +0000"'


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_astring_parses_back(value):
    """Whatever astring renders, our parser reads back as the same bytes (but a NUL,
    which no literal may carry, as U+FFFD: issue 17 item 8)."""
    wire = encoding.astring(value)
    if wire.startswith(b"{"):
        head, _, data = wire.partition(b"\r\n")
        segments = [b"A X " + head, data, b""]
    else:
        segments = [b"A X " + wire]
    token = parse_command(segments).args[0]
    assert b"\0" not in wire
    expected = value.replace(b"\0", "\ufffd".encode())
    assert (token.encode() if isinstance(token, str) else bytes(token)) == expected


@pytest.mark.parametrize("name", ["INBOX", "Entw\u00fcrfe", "a&b", "\u65e5\u672c\u8a9e/x",
                                  "~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e", "&", ""])
def test_mutf7_round_trip_and_matches_twisted(name):
    encoded = mutf7.encode(name)
    assert mutf7.decode(encoded) == name
    assert encoded == codecs.encode(name, "imap4-utf-7")


def test_mutf7_rfc_example():
    assert mutf7.decode(b"~peter/mail/&U,BTFw-/&ZeVnLIqe-") == (
        "~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e")


@pytest.mark.parametrize("bad", [b"&", b"&Jjo", b"&AGE-", b"&*&-", b"&U,BTF-", b"\xff\xfe"])
def test_mutf7_rejects_malformed(bad):
    with pytest.raises(ParseError):
        mutf7.decode(bad)


def test_mutf7_accepts_utf8():
    assert mutf7.decode("Entw\u00fcrfe".encode()) == "Entw\u00fcrfe"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_mutf7_round_trip_any(name):
    assert mutf7.decode(mutf7.encode(name)) == name


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=30))
def test_mutf7_decode_only_parse_error(data):
    try:
        mutf7.decode(data)
    except ParseError:
        pass
