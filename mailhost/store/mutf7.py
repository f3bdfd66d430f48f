"""Modified UTF-7 (RFC 3501 section 5.1.3), the spelling of folder names on disk.

Maildir++ stores a folder as the directory ``.<name>`` with the name in modified
UTF-7, as Dovecot and Courier do by default, so a folder created here shows up under
the same name when another server reads the Maildir, and the other way round. The
IMAP layer uses the same codec for names on the wire.
"""

from __future__ import annotations

import base64
import binascii


def encode(name: str) -> str:
    """Unicode name -> modified UTF-7 (ASCII only)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).rstrip(b"=").replace(b"/", b",").decode()
                       + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def decode(name: str) -> str:
    """Modified UTF-7 -> unicode. Anything malformed raises ValueError."""
    if not name.isascii():
        raise ValueError("modified UTF-7 is ASCII only")
    out: list[str] = []
    i, n = 0, len(name)
    while i < n:
        amp = name.find("&", i)
        if amp < 0:
            out.append(name[i:])
            break
        out.append(name[i:amp])
        dash = name.find("-", amp + 1)
        if dash < 0:
            raise ValueError("Unterminated modified UTF-7 sequence in mailbox name")
        chunk = name[amp + 1:dash]
        i = dash + 1
        if not chunk:
            out.append("&")
            continue
        if len(chunk) % 4 == 1:
            raise ValueError("Invalid modified UTF-7 in mailbox name")
        padded = chunk.replace(",", "/") + "=" * (-len(chunk) % 4)
        try:
            raw = base64.b64decode(padded, validate=True)
            if len(raw) % 2:
                raise ValueError("odd UTF-16 length")
            text = raw.decode("utf-16-be")
        except (binascii.Error, ValueError):
            raise ValueError("Invalid modified UTF-7 in mailbox name") from None
        if any(0x20 <= ord(c) <= 0x7E for c in text):
            # Printable ASCII must be written directly, not encoded (RFC 3501 5.1.3).
            raise ValueError("Invalid modified UTF-7 in mailbox name")
        out.append(text)
    return "".join(out)
