"""Backpressure for large IMAP responses.

``FETCH 1:* BODY[]`` on a big mailbox, or one 100 MB message, must not be rendered
into the transport buffer in one go. ``OutputGate`` is registered once per
connection as the transport's streaming producer: the transport pauses it when its
send buffer is full and resumes it when the buffer drains, and writers ``await
gate.wait()`` between chunks.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from mailhost.store.interfaces import IMessageReader

CHUNK = 64 * 1024
#: A NUL in message data goes out as this octet: RFC 3501 excludes NUL from a literal,
#: and the same length keeps RFC822.SIZE and partial offsets true (Dovecot does this).
NUL_IN_BODY = b"\x80"


def without_nul(data: bytes) -> bytes:
    """Message octets fit for a literal: each NUL replaced by 0x80, length kept."""
    return data.replace(b"\0", NUL_IN_BODY) if b"\0" in data else data


@implementer(IPushProducer)
class OutputGate:
    """Implements: IPushProducer. A latch the transport closes when it is full."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self._waiters: list[defer.Deferred] = []
        #: Called when the transport resumes us (its buffer has drained), before the
        #: waiters run: the session's ``DirectWriter.resume``.
        self.on_resume: Callable[[], None] | None = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.on_resume is not None:
            self.on_resume()
        self._release()

    def stopProducing(self) -> None:
        self.stopped = True
        self.paused = False
        self._release()

    def _release(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def wait(self) -> defer.Deferred:
        """Fires when the transport can take more (at once if it can now)."""
        if not self.paused or self.stopped:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        return d


async def stream_message(reader: IMessageReader, length: int, write, gate: OutputGate,
                         on_progress=None, keep_nul: bool = False,
                         out: list[bytes] | None = None) -> int:
    """Copy exactly ``length`` octets from the message ``reader`` to ``write``, a chunk
    at a time as the reader delivers them (off the reactor thread) and the transport
    takes them.

    ``out`` is the response around the literal, held by the caller: what it holds goes
    out with the first chunk, and the last chunk is left in it for the caller to write
    with the rest of the response, so a small message's whole FETCH line is one write
    (one ``send`` on plain TCP, one TLS record batch), not five. Without ``out`` every
    chunk is written as it arrives. Held bytes are written before waiting for a read
    that is not done yet, so nothing due sits behind the disk.

    A short message is padded with spaces so the literal length announced before the
    data stays true (the protocol would otherwise desynchronise); returns the number
    of octets that really came from the message. NULs go out as 0x80 (``without_nul``)
    unless ``keep_nul`` (a BINARY literal8).
    """
    held = out if out is not None else []
    left = length
    got = 0
    while left > 0:
        if gate.stopped:
            break
        d = reader.read()
        if held and not d.called:
            _flush(held, write)
        chunk = await d
        if not chunk:
            while left > 0:
                if held:
                    _flush(held, write)
                n = min(CHUNK, left)
                held.append(b" " * n)
                left -= n
            break
        if len(chunk) > left:
            chunk = chunk[:left]
        held.append(chunk if keep_nul else without_nul(chunk))
        got += len(chunk)
        left -= len(chunk)
        if on_progress is not None:
            on_progress()
        if left > 0:
            _flush(held, write)
            if gate.paused:
                await gate.wait()
    if out is None and held:
        _flush(held, write)
    return got


def _flush(held: list[bytes], write) -> None:
    write(held[0] if len(held) == 1 else b"".join(held))
    held.clear()
