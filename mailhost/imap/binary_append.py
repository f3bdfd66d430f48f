"""APPEND of binary data (RFC 3516 4.4): NUL octets sent in a literal8 are kept, encoded.

RFC 3516 lets a client APPEND data with NUL octets in a ``~{n}`` literal8 (a plain
literal may not hold NUL: ``mailhost.imap.parser`` answers BAD), and lets the server
"modify the CTE of the appended data, however any such transformation MUST NOT result
in a loss of data". A stored NUL could never go out again in ``BODY[]`` (RFC 9051 4.3:
"unencoded binary strings are not permitted" but in a BINARY literal8), so each leaf
part whose body holds NUL is re-encoded here as base64, its Content-Transfer-Encoding
field replaced: ``BINARY[n]`` gives back exactly the octets sent, ``BODY[n]`` a
textual form (Dovecot's imaptest ``append-binary``: "should have been converted to
base64"). Only identity encodings (7bit, 8bit, binary, none) are re-encoded; NUL in a
header, or inside a base64/quoted-printable body, cannot be kept losslessly and is
refused with ``NO [UNKNOWN-CTE]``. Messages without NUL pass through unchanged.
"""

from __future__ import annotations

import base64

from mailhost.imap import mime
from mailhost.imap.responses import No

_IDENTITY = frozenset({"7BIT", "8BIT", "BINARY"})
_CTE = b"content-transfer-encoding:"


def without_nul(data: bytes) -> bytes:
    """``data`` with every leaf body holding NUL re-encoded as base64; ``No`` when a NUL
    sits where no transfer encoding can carry it."""
    if b"\0" not in data:
        return data
    root = mime.scan_bytes(data)
    edits: list[tuple[int, int, bytes]] = []
    for part in root.walk():
        if part.children or part.message is not None or part.overflow >= 0:
            continue
        body = data[part.body_start:part.body_end]
        if b"\0" not in body:
            continue
        if (part.encoding or "7BIT").upper() not in _IDENTITY:
            raise No("[UNKNOWN-CTE] NUL octets in a part encoded "
                     f"{part.encoding}: they cannot be stored (RFC 3516 4.4)")
        header = _recoded_header(data[part.header_start:part.body_start])
        edits.append((part.header_start, part.body_end, header + _base64(body)))
    out = bytearray()
    at = 0
    for start, end, text in sorted(edits):
        out += data[at:start] + text
        at = end
    out += data[at:]
    result = bytes(out)
    if b"\0" in result:
        raise No("[UNKNOWN-CTE] NUL octets in a header or between MIME parts cannot be"
                 " stored (RFC 3516 4.4)")
    return result


def _recoded_header(block: bytes) -> bytes:
    """A part's header block (blank line included) with its Content-Transfer-Encoding
    field(s) replaced by ``base64``."""
    lines = block.split(b"\n")  # the last piece is b"" after the blank line's LF
    kept: list[bytes] = []
    dropping = False
    for line in lines[:-1]:
        if line in (b"", b"\r"):
            break
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line[:len(_CTE)].lower() == _CTE
        if not dropping:
            kept.append(line)
    kept.append(b"Content-Transfer-Encoding: base64\r")
    return b"\n".join(kept) + b"\n\r\n"


def _base64(body: bytes) -> bytes:
    """Base64 in lines of 76 (RFC 2045 6.8), CRLF between them; a body that ended in
    CRLF (a top-level part, whose body runs to the message's end) keeps a final CRLF."""
    text = base64.encodebytes(body).replace(b"\n", b"\r\n")
    return text if body.endswith(b"\r\n") else text[:-2]
