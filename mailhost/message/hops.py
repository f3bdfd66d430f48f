"""The hop count: ``Received:`` fields in a message's header block, counted as it streams.

Two loop checks use it, and both are needed. The SMTP server counts the fields the
client sent and refuses the message during DATA (``554 5.4.6``), for local and remote
recipients alike. The spool (``SpoolWriter``) counts what it stores, our own
``Received:`` line included, into ``Envelope.hops``; the scheduler checks that again
before relaying, which also covers mail queued without an SMTP session (bounces, library
users of ``IOutboundQueue``) and a limit lowered across a restart. One counter serves
both, so they cannot disagree on what a hop is.
"""

from __future__ import annotations

_FIELD = b"received:"
_KEEP = len(_FIELD)  # a line's first octets are all it takes to recognise the field


class HopCounter:
    """Counts ``Received:`` fields in the header block of a message fed in chunks.

    Any chunking gives the same count. Lines end in LF or CRLF; the header block ends
    at the first empty line. Only the first ``MAX_HEADER_BYTES`` of it are looked at.
    """

    #: Stop looking after this many header octets; a "header" this big is a body.
    MAX_HEADER_BYTES = 1024 * 1024

    __slots__ = ("count", "done", "_seen", "_head")

    def __init__(self) -> None:
        self.count = 0
        self.done = False  # the header block ended (or was too big): feed is a no-op
        self._seen = 0
        self._head = b""  # the first octets (up to _KEEP) of an unfinished line

    def feed(self, data: bytes) -> None:
        """Feed the next message bytes (already dot-unstuffed)."""
        if self.done:
            return
        # Bounded by header octets, not by chunk: one write may hold a whole message.
        end = min(len(data), self.MAX_HEADER_BYTES - self._seen)
        pos = 0
        while (nl := data.find(b"\n", pos, end)) >= 0:
            line = data[pos:min(nl, pos + _KEEP)]
            if self._head:
                line, self._head = self._head + line, b""
            pos = nl + 1
            if line == b"" or line == b"\r":
                self.done = True
                return
            if line[:_KEEP].lower() == _FIELD:
                self.count += 1
        if end < len(data):
            self.done = True
            return
        self._seen += end
        if len(self._head) < _KEEP:
            self._head += data[pos:pos + _KEEP - len(self._head)]

    def finish(self) -> None:
        """The message ended: a last header line without a line end counts too."""
        if not self.done and self._head.lower() == _FIELD:
            self.count += 1
        self.done = True
        self._head = b""
