"""CRLF normalisation: on write (bare LF -> CRLF, chunk-boundary safe) and on read
(a streaming wrapper for LF-only files other programs dropped into a Maildir)."""

from __future__ import annotations

import io
import os

READ_CHUNK = 64 * 1024


class CRLFNormalizer:
    """Turns bare LF into CRLF across a stream of chunks.

    A ``\\r`` ending one chunk followed by ``\\n`` starting the next is one CRLF, not
    ``\\r\\r\\n``. Bare CR is left alone (as Dovecot's mail_save_crlf does).
    """

    __slots__ = ("_last_cr",)

    def __init__(self) -> None:
        self._last_cr = False

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        head = b""
        if self._last_cr and data[:1] == b"\n":
            head, data = b"\n", data[1:]
        # After consuming the LF of a split CRLF the rest may be empty: then the
        # stream no longer ends in CR (a following "\n" is a bare LF of its own).
        self._last_cr = data.endswith(b"\r")
        if b"\n" not in data:
            return head + data
        return head + data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def crlf_size(path: str) -> tuple[int, int]:
    """(CRLF-normalised size, size on disk) of a file; reads it in chunks (call in a thread)."""
    norm = CRLFNormalizer()
    total = raw = 0
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            raw += len(chunk)
            total += len(norm.feed(chunk))
    return total, raw


class CRLFReader(io.RawIOBase):
    """A read-only file over ``raw`` that yields its content CRLF-normalised.

    Seeking is supported (backwards by re-reading from the start), so callers may
    treat it like the plain file they get for files already stored in CRLF.
    """

    def __init__(self, raw) -> None:
        super().__init__()
        self._raw = raw
        self._norm = CRLFNormalizer()
        self._pending = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf) -> int:
        want = len(buf)
        while len(self._pending) < want:
            chunk = self._raw.read(READ_CHUNK)
            if not chunk:
                break
            self._pending += self._norm.feed(chunk)
        n = min(want, len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._pos
        elif whence != os.SEEK_SET:
            raise io.UnsupportedOperation("CRLFReader supports SEEK_SET and SEEK_CUR only")
        if offset < self._pos:
            self._raw.seek(0)
            self._norm = CRLFNormalizer()
            self._pending = b""
            self._pos = 0
        skip = offset - self._pos
        scratch = bytearray(READ_CHUNK)
        while skip > 0:
            n = self.readinto(memoryview(scratch)[: min(skip, READ_CHUNK)])
            if not n:
                break
            skip -= n
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()
