"""The message as it goes on the wire: CRLF line ends only, and dot-stuffing for DATA.

RFC 5321 §2.3.8 forbids a bare CR or LF in the transfer, and a receiver may read one
as a line end or reject the message (the SMTP smuggling attacks of 2023 live in that
gap). The spool keeps what the client sent, so each line end is normalised here:
CRLF stays, a lone CR or LF becomes CRLF. Both encoders keep their state across
chunks, so a CR at the end of one read and its LF at the start of the next count
once, and a ``.`` that starts a chunk is stuffed like any other (Twisted's transform
missed it; TWISTED-MAIL-NOTES.md). Any chunking gives the same bytes.
"""

from __future__ import annotations

from mailhost.dotstuffing import DotStuffer


class CRLFNormalizer:
    """Bare CR and bare LF to CRLF, chunk by chunk (for BDAT, which is not stuffed)."""

    def __init__(self) -> None:
        self._after_cr = False  # the last chunk ended with a CR, written as CRLF
        self.last = b""  # the last (up to) two octets written

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]  # the LF of a CRLF split across reads: already written
            if not chunk:
                self._after_cr = False
                return b""
        self._after_cr = chunk[-1:] == b"\r"
        crlf = chunk.count(b"\r\n")
        if chunk.count(b"\r") != crlf or chunk.count(b"\n") != crlf:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        self.last = (self.last + chunk)[-2:]
        return chunk

    __call__ = feed

    def final_crlf(self) -> bytes:
        """The CRLF a message lacking a final line end needs (``b""`` if it has one)."""
        return b"\r\n" if self.last and self.last != b"\r\n" else b""


class DataEncoder:
    """CRLF-normalised and dot-stuffed chunks for DATA; ``terminator`` ends them.

    The stuffing is the POP3 server's (``DotStuffer``): one implementation, so both
    transfers agree byte for byte."""

    def __init__(self) -> None:
        self._crlf = CRLFNormalizer()
        self._dots = DotStuffer()

    def feed(self, chunk: bytes) -> bytes:
        return self._dots.feed(self._crlf.feed(chunk))

    __call__ = feed

    def terminator(self) -> bytes:
        """What ends DATA: a CRLF if the message lacks a final one, then ``.`` CRLF."""
        return self._dots.terminator()
