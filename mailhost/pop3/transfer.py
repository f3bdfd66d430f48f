"""Streaming RETR/TOP: the stored message, dot-stuffed, onto the wire in bounded chunks.

Twisted's POP3 server stuffs each 16 KiB chunk on its own, so a ``.`` that starts the
first line or a chunk goes out unstuffed, and it rewrites CRLF into ``\\r\\r\\n``. Here
the transforms carry their state across chunk boundaries (whether the previous chunk
ended a line, the last bytes of the header section, the body lines still wanted), so
any chunking gives the same bytes as stuffing the whole message at once. Line endings
are never touched: the store already yields CRLF.

Reads come from the store's ``IMessageReader`` (mailhost.store.reader: a small
message in one read, a big one on the thread pool one chunk ahead of the wire).
The push-producer protocol means a session holds a few chunks at most, whatever
the message size.

Writes go through the session's ``mailhost.tcp.DirectWriter``: while the kernel takes
every byte, the status line, a small message and its terminator leave in one ``send``
as the RETR is read, instead of being queued for the reactor's next turn (two
``epoll_ctl`` calls and a wake-up more per RETR, on a client that waits for each
response before it asks for the next one). Once the socket pushes back, everything
goes through the transport, whose buffer pauses this producer as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhost.message.dotstuffing import DotStuffer
from mailhost.store.interfaces import IMessageReader

# Chunks written in one reactor turn when the transport never pushes back, so a fast
# reader cannot keep the reactor from serving other sessions.
_CHUNKS_PER_TURN = 8


class TopFilter:
    """Pass the header section, the blank line and the first ``lines`` body lines (RFC 1939 TOP)."""

    def __init__(self, lines: int) -> None:
        self._lines = lines
        self._in_headers = True
        # Pretend the message is preceded by a line end, so a message that starts with
        # the blank line (no headers) is found by the same search.
        self._tail = b"\n"
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        """Return the part of ``chunk`` to send; sets ``done`` once nothing more is wanted."""
        if self.done:
            return b""
        start = 0
        if self._in_headers:
            window = self._tail + chunk
            end = window.find(b"\n\r\n")
            if end < 0:
                self._tail = window[-2:]
                return chunk
            self._in_headers = False
            start = end + 3 - (len(window) - len(chunk))
        cut = self._cut(chunk, start)
        if cut is None:
            return chunk
        self.done = True
        return chunk[:cut]

    def _cut(self, chunk: bytes, start: int) -> int | None:
        """Offset just after the last wanted body line in ``chunk``, or None to take it all."""
        if self._lines == 0:
            return start
        count = chunk.count(b"\n", start)
        if count < self._lines:
            self._lines -= count
            return None
        pos = start
        for _ in range(self._lines):
            pos = chunk.index(b"\n", pos) + 1
        self._lines = 0
        return pos


@implementer(IPushProducer)
class MessageSender:
    """Write one message as a POP3 multi-line response body, with transport backpressure.

    Implements: IPushProducer. ``start()`` returns a Deferred that fires with the
    number of message octets sent (before stuffing) once the terminating ``.`` line is
    written, or fails if reading fails or the connection goes away first. The reader
    is closed either way.
    """

    def __init__(self, transport: Any, reader: IMessageReader, top_lines: int | None = None,
                 reactor: Any = None, on_progress: Callable[[], None] | None = None,
                 write: Callable[[bytes], None] | None = None, prefix: bytes = b"") -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._transport = transport
        # ``write``: the session's own writer (mailhost.tcp.DirectWriter), so this body
        # and its other responses keep one order; the transport's by default.
        self._write = write if write is not None else transport.write
        # What one pump produced, written at its end in one piece: a small message
        # and its terminator are one send, not two.
        self._out: list[bytes] = [prefix] if prefix else []
        self._reader = reader
        self._stuffer = DotStuffer()
        self._top = TopFilter(top_lines) if top_lines is not None else None
        self._reactor = reactor
        self._on_progress = on_progress
        self._paused = False
        self._finished = False
        self._waiting = False  # a read() is outstanding
        self._pumping = False
        self._scheduled: Any = None
        self._deferred: defer.Deferred[int] = defer.Deferred()
        self.octets = 0

    def start(self) -> defer.Deferred[int]:
        self._transport.registerProducer(self, True)
        self._pump()
        return self._deferred

    # IPushProducer
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._finish(ConnectionError("connection lost during transfer"))

    def _pump(self) -> None:
        """Ask for chunks while the transport takes them; reads that are already done
        come back synchronously, so this loops (a few per reactor turn) instead of
        recursing."""
        if self._pumping or self._scheduled is not None:
            return
        self._pumping = True
        try:
            turns = 0
            while not (self._paused or self._finished or self._waiting):
                if turns == _CHUNKS_PER_TURN:
                    self._scheduled = self._reactor.callLater(0, self._resume_turn)
                    return
                turns += 1
                self._waiting = True
                self._reader.read().addCallbacks(self._got, self._read_failed)
        finally:
            self._pumping = False
            self._flush()

    def _flush(self) -> None:
        out = self._out
        if out:
            self._out = []
            self._write(out[0] if len(out) == 1 else b"".join(out))

    def _resume_turn(self) -> None:
        self._scheduled = None
        self._pump()

    def _got(self, data: bytes) -> None:
        self._waiting = False
        if self._finished:
            return
        if self._top is not None and data:
            data = self._top.feed(data)
        if data:
            self.octets += len(data)
            self._out.append(self._stuffer.feed(data))
            if self._on_progress is not None:
                self._on_progress()
        if not data or (self._top is not None and self._top.done):
            self._out.append(self._stuffer.terminator())
            self._finish(None)
            return
        self._pump()
        if not self._pumping:  # (a pump flushes when it ends)
            self._flush()

    def _read_failed(self, failure: Failure) -> None:
        self._waiting = False
        self._finish(failure.value)  # a vanished file or I/O error ends this response

    def _finish(self, error: BaseException | None) -> None:
        if self._finished:
            return
        self._finished = True
        if error is None:
            self._flush()
        else:
            self._out = []
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        self._reader.close()
        try:
            self._transport.unregisterProducer()
        except Exception:  # already gone with the connection
            pass
        if error is None:
            self._deferred.callback(self.octets)
        else:
            self._deferred.errback(error)
