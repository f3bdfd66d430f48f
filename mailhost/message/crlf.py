"""CRLF normalisation, the one implementation every part uses.

Two rules, one class (``CRLFNormalizer``), chosen by who reads the result:

- **On the wire and for what SMTP receives** (the default): CRLF stays, a lone CR or a
  lone LF becomes CRLF. RFC 5321 §2.3.8 forbids bare CR and LF in SMTP, and a
  receiver may take one for a line end or reject the message (the SMTP smuggling
  attacks of 2023 live in that gap). The relay client, the spool and SMTP's
  ``smtp.bare_newline = "normalize"`` policy (``newlines``) use this rule.
- **``keep_bare_cr=True``, for the Maildir store:** a bare LF becomes CRLF, a bare CR
  is left alone, as Dovecot's ``mail_save_crlf`` and its CRLF read stream do. Sizes
  the store computes for files that other programs dropped into a shared Maildir
  (``crlf_size``, ``CRLFReader``) then agree with Dovecot's, and an IMAP APPEND is
  stored as the client sent it.

Either way a CR at the end of one chunk and the LF at the start of the next are one
CRLF, so any chunking gives the same bytes. The ``crlf_size``/``CRLFReader`` helpers
read LF-only files other programs wrote (the store calls them in its threads).
"""

from __future__ import annotations

import io
import os
from typing import Any, BinaryIO

READ_CHUNK = 64 * 1024


class CRLFNormalizer:
    """Line ends to CRLF across a stream of chunks (see the module docstring)."""

    __slots__ = ("_after_cr", "_keep_cr", "last")

    def __init__(self, *, keep_bare_cr: bool = False) -> None:
        self._keep_cr = keep_bare_cr
        self._after_cr = False  # the last chunk ended with a CR
        self.last = b""  # the last (up to) two octets written

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        out = self._keep(data) if self._keep_cr else self._convert(data)
        self.last = out[-2:] if len(out) >= 2 else (self.last + out)[-2:]
        return out

    __call__ = feed

    def _keep(self, data: bytes) -> bytes:
        head = b""
        if self._after_cr and data[:1] == b"\n":
            head, data = b"\n", data[1:]
        # After consuming the LF of a split CRLF the rest may be empty: then the
        # stream no longer ends in CR (a following "\n" is a bare LF of its own).
        self._after_cr = data.endswith(b"\r")
        if b"\n" not in data:
            return head + data
        return head + data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    def _convert(self, data: bytes) -> bytes:
        if self._after_cr and data[:1] == b"\n":
            data = data[1:]  # the LF of a CRLF split across reads: already written
            if not data:
                self._after_cr = False
                return b""
        self._after_cr = data[-1:] == b"\r"  # written as CRLF now
        crlf = data.count(b"\r\n")
        if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        return data

    def final_crlf(self) -> bytes:
        """The CRLF a message lacking a final line end needs (``b""`` if it has one)."""
        return b"\r\n" if self.last and self.last != b"\r\n" else b""


def crlf_size(path: str) -> tuple[int, int]:
    """(CRLF-normalised size, size on disk) of a file, by the store's rule (bare CR
    kept); reads it in chunks (call in a thread)."""
    norm = CRLFNormalizer(keep_bare_cr=True)
    total = raw = 0
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            raw += len(chunk)
            total += len(norm.feed(chunk))
    return total, raw


class CRLFReader(io.RawIOBase):
    """A read-only file over ``raw`` that yields its content CRLF-normalised by the
    store's rule (bare CR kept, as ``crlf_size`` counts it).

    Seeking is supported (backwards by re-reading from the start), so callers may
    treat it like the plain file they get for files already stored in CRLF.
    """

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self._norm = CRLFNormalizer(keep_bare_cr=True)
        self._pending = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf: Any) -> int:  # a writable buffer (memoryview, bytearray)
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
            self._norm = CRLFNormalizer(keep_bare_cr=True)
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
