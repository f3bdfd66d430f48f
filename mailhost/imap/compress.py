"""COMPRESS=DEFLATE (RFC 4978): raw deflate both ways once the client asks.

Input is inflated in bounded pieces (``pull``), so a few kilobytes that inflate to
gigabytes (a decompression bomb) never sit in memory at once: the server takes the next
piece only when its framer has room, exactly as it reads the socket. Output gets a
sync flush after every write, so a reply is never held in the compressor while the
client waits for it.
"""

from __future__ import annotations

import zlib

#: Raw deflate (no zlib header), a 32 KiB window: what RFC 4978 §3 prescribes.
_WBITS = -15


class DeflateError(Exception):
    """The client's compressed stream is corrupt."""


class Inflater:
    """The client's compressed bytes, inflated on demand in bounded pieces."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(_WBITS)
        self._pending = b""
        self._maybe_more = False  # the last pull filled its limit: zlib may hold output

    @property
    def pending(self) -> bool:
        return bool(self._pending) or self._maybe_more

    def push(self, data: bytes) -> None:
        self._pending += data

    def pull(self, limit: int) -> bytes:
        """Up to ``limit`` inflated octets (b"" when nothing is pending)."""
        if not self.pending:
            return b""
        try:
            out = self._d.decompress(self._pending, limit)
        except zlib.error as e:
            self._pending, self._maybe_more = b"", False
            raise DeflateError(str(e)) from None
        self._pending = self._d.unconsumed_tail
        self._maybe_more = len(out) == limit
        if self._d.eof:  # the client ended its stream: whatever follows is not deflate
            self._pending, self._maybe_more = b"", False
            if self._d.unused_data:
                raise DeflateError("data after the end of the compressed stream")
        return out


class Deflater:
    """Our replies, compressed; every ``deflate`` result is complete on its own."""

    def __init__(self, level: int = 6) -> None:
        self._c = zlib.compressobj(level, zlib.DEFLATED, _WBITS)

    def deflate(self, data: bytes) -> bytes:
        return self._c.compress(data) + self._c.flush(zlib.Z_SYNC_FLUSH)
