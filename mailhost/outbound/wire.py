"""The message as it goes on the wire: CRLF line ends only, and dot-stuffing for DATA.

RFC 5321 §2.3.8 forbids a bare CR or LF in the transfer, and a receiver may read one
as a line end or reject the message (the SMTP smuggling attacks of 2023 live in that
gap). SMTP and the spool already normalise what they take in, but a spool file an
older version wrote may not be, so each line end is normalised again here
(``mailhost.message.crlf``: CRLF stays, a lone CR or LF becomes CRLF): whatever the
spool holds, the wire never carries a bare CR or LF. Both keep their state across
chunks, so a CR at the end of one read and its LF at the start of the next count once, and a ``.`` that starts a chunk is stuffed like any other (Twisted's transform
missed it; TWISTED-MAIL-NOTES.md). Any chunking gives the same bytes.
"""

from __future__ import annotations

from mailhost.message.crlf import CRLFNormalizer
from mailhost.message.dotstuffing import DotStuffer


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
