"""Rendering IMAP response data: atoms, quoted strings, literals, flags and dates.

A value that cannot be quoted (CR, LF, NUL, 8-bit bytes, or long) goes out as a
literal, so 8-bit header bytes never crash a response (the stock Twisted server
raised UnicodeEncodeError there). A literal never carries a NUL (RFC 3501 section 4.3
excludes it outside BINARY's literal8): a NUL in a header value becomes U+FFFD, as
Dovecot 2.3 sends it in ENVELOPE and BODYSTRUCTURE strings.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

MAX_QUOTED = 1024
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _b(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


#: 7-bit bytes but NUL, CR and LF (one regex match, not a Python test per byte: an
#: ENVELOPE has a dozen strings).
_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
#: What goes out as an atom. Brackets are legal in an astring but quoted anyway: some
#: clients misread them.
_ASTRING = re.compile(rb"[^\x00-\x20\x7f-\xff(){\"%*\\\[\]]+")


def quotable(data: bytes) -> bool:
    return len(data) <= MAX_QUOTED and _QUOTABLE.fullmatch(data) is not None


def _quoted(data: bytes) -> bytes:
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def quote(value: str | bytes) -> bytes:
    """``"..."`` with ``\\`` and ``"`` escaped; ValueError if it needs a literal."""
    data = _b(value)
    if not quotable(data):
        raise ValueError("value needs a literal")
    return _quoted(data)


#: What a NUL in a string value (ENVELOPE, BODYSTRUCTURE) is sent as: U+FFFD in UTF-8.
NUL_IN_STRING = "\ufffd".encode()


def literal(value: str | bytes) -> bytes:
    data = _b(value).replace(b"\0", NUL_IN_STRING)
    return b"{%d}\r\n" % len(data) + data


def string(value: str | bytes) -> bytes:
    """A quoted string if possible, else a literal."""
    data = _b(value)
    return _quoted(data) if quotable(data) else literal(data)


def astring(value: str | bytes) -> bytes:
    """An atom if safe, else a quoted string if safe, else a literal."""
    data = _b(value)
    if _ASTRING.fullmatch(data) is not None and data.upper() != b"NIL":
        return data
    return string(data)


def nstring(value: bytes | str | None) -> bytes:
    """NIL for None, else a string."""
    return b"NIL" if value is None else string(value)


def format_flags(flags: Iterable[str]) -> bytes:
    """``(\\Seen foo)``; system flags first, then keywords, both sorted for stable output."""
    items = sorted(flags, key=lambda f: (not f.startswith("\\"), f))
    return b"(" + b" ".join(f.encode("ascii", "replace") for f in items) + b")"


def format_datetime(ts: float) -> bytes:
    """IMAP date-time, quoted, in UTC: ``"17-Jul-1996 02:44:25 +0000"``."""
    t = time.gmtime(ts)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec
    )
