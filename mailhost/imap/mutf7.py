"""IMAP modified UTF-7 mailbox names (RFC 3501 section 5.1.3).

Our own small codec rather than Twisted's ``imap4-utf-7`` because we need a
decoder that rejects malformed input with ``ParseError`` (the protocol then
answers BAD) instead of guessing, and that accepts raw UTF-8 names, which
several clients send although RFC 3501 does not allow them.
"""

from __future__ import annotations

import base64
import binascii

from mailhost.imap.parser import ParseError


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
    out: list[str] = []
    i = 0
    n = len(name)
    while i < n:
        amp = name.find(b"&", i)
        if amp < 0:
            out.append(name[i:].decode("ascii"))
            break
        out.append(name[i:amp].decode("ascii"))
        dash = name.find(b"-", amp + 1)
        if dash < 0:
            raise _err("Unterminated modified UTF-7 sequence in mailbox name")
        chunk = name[amp + 1:dash]
        i = dash + 1
        if not chunk:
            out.append("&")
            continue
        if len(chunk) % 4 == 1:
            raise _err("Invalid modified UTF-7 in mailbox name")
        padded = chunk.replace(b",", b"/") + b"=" * (-len(chunk) % 4)
        try:
            raw = base64.b64decode(padded, validate=True)
            if len(raw) % 2:
                raise ValueError("odd UTF-16 length")
            text = raw.decode("utf-16-be")
        except (binascii.Error, ValueError):
            raise _err("Invalid modified UTF-7 in mailbox name") from None
        if any(0x20 <= ord(c) <= 0x7E for c in text):
            # Printable ASCII must be sent directly, not encoded (RFC 3501 5.1.3).
            raise _err("Invalid modified UTF-7 in mailbox name")
        out.append(text)
    return "".join(out)


def encode(name: str) -> bytes:
    """Unicode mailbox name → modified UTF-7 bytes."""
    out = bytearray()
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.extend(b"&" + base64.b64encode(raw).rstrip(b"=").replace(b"/", b",") + b"-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.extend(b"&-" if ch == "&" else ch.encode("ascii"))
        else:
            pending.append(ch)
    flush()
    return bytes(out)
