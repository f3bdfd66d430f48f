"""IMAP modified UTF-7 mailbox names (RFC 3501 section 5.1.3).

The codec is the store's (folder directories use the same spelling); this layer
rejects malformed input with ``ParseError`` (the protocol then answers BAD) instead
of guessing, and accepts raw UTF-8 names, which several clients send although RFC
3501 does not allow them.
"""

from __future__ import annotations

from mailhost.imap.parser import ParseError
from mailhost.store import mutf7 as _codec


def _err(message: str) -> ParseError:
    return ParseError(None, message)


def decode(name: bytes) -> str:
    """Mailbox name on the wire → unicode. Malformed ``&...-`` → ParseError."""
    if any(c >= 0x80 for c in name):
        if b"&" in name:
            raise _err("Mailbox name mixes 8-bit bytes and modified UTF-7")
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:
            raise _err("Mailbox name is neither modified UTF-7 nor UTF-8") from None
    try:
        return _codec.decode(name.decode("ascii"))
    except ValueError as e:
        raise _err(str(e)) from None


def encode(name: str) -> bytes:
    """Unicode mailbox name → modified UTF-7 bytes."""
    return _codec.encode(name).encode("ascii")
