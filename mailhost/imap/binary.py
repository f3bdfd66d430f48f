"""BINARY (RFC 3516): a body part with its Content-Transfer-Encoding undone.

Decoding runs chunk by chunk (``Decoder``), so a 100 MB base64 attachment is sent in
constant memory: one pass counts the decoded size and looks for NUL (the literal must
announce its length first, and NUL forces a ``~{n}`` literal8), kept in the folder's
cache; the second pass decodes while streaming, from the store's message reader.
"""

from __future__ import annotations

import binascii
import re
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred

from mailhost.imap.mime import Part

IDENTITY = frozenset({"7BIT", "8BIT", "BINARY"})
DECODED = frozenset({"BASE64", "QUOTED-PRINTABLE"})
CHUNK = 64 * 1024
_NOT_B64 = re.compile(rb"[^A-Za-z0-9+/]")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})|=\r?\n")


class UnknownEncoding(ValueError):
    """The part's transfer encoding is one we cannot undo ([UNKNOWN-CTE])."""


def encoding_of(part: Part) -> str:
    """The transfer encoding to undo (multiparts and messages are sent as they are)."""
    if part.type == "MULTIPART" or part.message is not None:
        return "7BIT"
    encoding = (part.encoding or "7BIT").upper()
    if encoding not in IDENTITY and encoding not in DECODED:
        raise UnknownEncoding(encoding)
    return encoding


class Decoder:
    """Undoes one transfer encoding over a stream of chunks cut anywhere."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._carry = b""

    def feed(self, chunk: bytes) -> bytes:
        if self.encoding == "BASE64":
            data = self._carry + _NOT_B64.sub(b"", chunk)
            whole = len(data) // 4 * 4
            self._carry = data[whole:]
            return _b64(data[:whole])
        if self.encoding == "QUOTED-PRINTABLE":
            data = self._carry + chunk
            cut = data.rfind(b"\n") + 1  # whole lines only: "=" may end a chunk
            if len(data) - cut > 4 * CHUNK:  # an absurd line: decode it anyway, bounded
                cut = len(data) - 2
            self._carry = data[cut:]
            return _qp(data[:cut])
        return chunk

    def end(self) -> bytes:
        rest, self._carry = self._carry, b""
        if self.encoding == "BASE64":  # under four characters: pad, or drop a lone one
            rest = rest[:-1] if len(rest) % 4 == 1 else rest
            return _b64(rest + b"=" * (-len(rest) % 4))
        if self.encoding == "QUOTED-PRINTABLE":
            return _qp(rest)
        return rest


def _b64(data: bytes) -> bytes:
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        return b""


def _qp(data: bytes) -> bytes:
    """RFC 2045 6.7: ``=XX`` escapes, soft line breaks removed, trailing blanks of a
    line dropped; a stray ``=`` kept as it is (robustness, 6.7 note 1)."""
    lines = data.split(b"\n")
    out = []
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        line = line.rstrip(b"\r") if not last else line
        if not last:
            line = line.rstrip(b" \t")
        out.append(line)
    text = b"\r\n".join(out)
    return _QP_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]) if m.group(1) else b"", text)


def measure(f: BinaryIO, start: int, end: int, encoding: str) -> tuple[int, bool]:
    """(decoded size, whether it holds a NUL) of ``f[start:end]`` (thread side)."""
    f.seek(start)
    decoder, size, nul, left = Decoder(encoding), 0, False, end - start
    while left > 0:
        chunk = f.read(min(CHUNK, left))
        if not chunk:
            break
        left -= len(chunk)
        out = decoder.feed(chunk)
        size += len(out)
        nul = nul or b"\0" in out
    out = decoder.end()
    return size + len(out), nul or b"\0" in out


def decode_all(f: BinaryIO, start: int, end: int, encoding: str) -> bytes:
    """The decoded bytes of a small range (thread side)."""
    f.seek(start)
    decoder = Decoder(encoding)
    return decoder.feed(f.read(max(0, end - start))) + decoder.end()


class DecodedReader:
    """An ``IMessageReader``-shaped view of an encoded range: decoded chunks, the
    first ``skip`` decoded octets left out (a partial fetch)."""

    def __init__(self, reader: Any, encoding: str, skip: int) -> None:
        self._reader = reader
        self._decoder = Decoder(encoding)
        self._skip = skip
        self._done = False

    async def _read(self) -> bytes:
        while not self._done:
            chunk = await self._reader.read()
            out = self._decoder.feed(chunk) if chunk else self._decoder.end()
            if not chunk:
                self._done = True
            if self._skip:
                cut = min(self._skip, len(out))
                out, self._skip = out[cut:], self._skip - cut
            if out:
                return out
        return b""

    def read(self) -> Deferred[bytes]:
        return Deferred.fromCoroutine(self._read())

    def close(self) -> None:
        self._reader.close()
