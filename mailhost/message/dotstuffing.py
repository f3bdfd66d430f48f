"""Dot-stuffing for multi-line transfers (SMTP DATA, RFC 5321 §4.5.2; POP3, RFC 1939 §3).

The stored message is already CRLF. Each line that begins with ``.`` gets one more,
including the first line and lines that start a new read chunk, which is where
Twisted's own transforms go wrong (TWISTED-MAIL-NOTES.md). Shared by the POP3 server
and the outbound SMTP client, which must agree byte for byte.
"""

from __future__ import annotations


class DotStuffer:
    """Stuffs chunks of a CRLF message; any chunking gives the same bytes."""

    def __init__(self) -> None:
        self._at_line_start = True
        self._tail = b""  # last (up to) two octets of unstuffed input seen

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        out = chunk.replace(b"\n.", b"\n..")
        if self._at_line_start and chunk[:1] == b".":
            out = b"." + out
        self._at_line_start = chunk[-1:] == b"\n"
        self._tail = (self._tail + chunk)[-2:]
        return out

    __call__ = feed

    def terminator(self) -> bytes:
        """What ends the transfer: a CRLF if the message lacks a final one, then ``.``."""
        if self._tail and self._tail != b"\r\n":
            return b"\r\n.\r\n"
        return b".\r\n"
