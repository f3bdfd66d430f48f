"""Streaming RETR/TOP: the stored message, dot-stuffed, onto the wire in bounded chunks.

Twisted's POP3 server stuffs each 16 KiB chunk on its own, so a ``.`` that starts the
first line or a chunk goes out unstuffed, and it rewrites CRLF into ``\\r\\r\\n``. Here
the transforms carry their state across chunk boundaries (whether the previous chunk
ended a line, the last bytes of the header section, the body lines still wanted), so
any chunking gives the same bytes as stuffing the whole message at once. Line endings
are never touched: the store already yields CRLF.

Reads run on the thread pool, one chunk ahead of the wire (``ChunkReader``):
measured on a busy host, a 64 KiB read from a just-written file cost up to half a
millisecond, too long to spend on the reactor thread for every chunk of every
session. The push-producer protocol means a session holds a few chunks at most,
whatever the message size.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, BinaryIO

from twisted.internet import defer, threads
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhost.message.dotstuffing import DotStuffer

# Reads of 256 KiB: on the benchmark host they cost 40% less CPU per MiB than 64 KiB
# reads (each is a thread hop) and doubled large-RETR throughput, while a session
# still holds about 1 MiB at most (the transport's buffer, one chunk ready, one read).
CHUNK_SIZE = 256 * 1024
# Messages up to this size are read in one go on the reactor thread (a bounded read
# from the page cache is cheaper than the thread hop; most mail is this small).
INLINE_READ = 64 * 1024
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


class ChunkReader:
    """A message file read in bounded chunks on the thread pool, one chunk ahead.

    The next chunk is already being read while the current one is on the wire, so
    neither disk latency nor a slow read ever stalls the reactor, and at most two
    chunks of a message are in memory. ``read()`` returns a Deferred firing with the
    next chunk (``b""`` at the end). ``run`` is how a read gets off the reactor
    thread (``deferToThread``; tests pass a synchronous stand-in).

    A buffered file's ``read(n)`` is short only at the end, so a short chunk ends the
    message without another read: most messages then cost one read, not two.
    """

    def __init__(self, message: BinaryIO, chunk_size: int = CHUNK_SIZE,
                 run: Callable[..., defer.Deferred[bytes]] | None = None,
                 inline: bool = False) -> None:
        self._file = message
        self._chunk_size = chunk_size
        self._run = run or threads.deferToThread
        self._short_read_is_eof = isinstance(message, io.BufferedIOBase)
        self._eof = False
        self._reading = False  # a read is running in the pool
        self._ready: bytes | None = None  # a finished read nobody asked for yet
        self._error: Failure | None = None
        self._waiter: defer.Deferred[bytes] | None = None
        self._closed = False
        if inline:
            # A small message (at most INLINE_READ octets) is one bounded read, done
            # right here: a thread hop would cost more than the read itself.
            self._reading = True
            try:
                data = self._file.read(self._chunk_size)
            except Exception:
                self._failed(Failure())
            else:
                self._arrived(data)
        else:
            self._start()

    def _start(self) -> None:
        self._reading = True
        self._run(self._file.read, self._chunk_size).addCallbacks(self._arrived, self._failed)

    def _arrived(self, data: bytes) -> None:
        self._reading = False
        if not data or (self._short_read_is_eof and len(data) < self._chunk_size):
            self._eof = True
        if self._closed:
            self._file.close()
        elif self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            if not self._eof:
                self._start()
            waiter.callback(data)
        else:
            self._ready = data

    def _failed(self, failure: Failure) -> None:
        self._reading = False
        if self._closed:
            self._file.close()
        elif self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.errback(failure)
        else:
            self._error = failure

    def read(self) -> defer.Deferred[bytes]:
        if self._ready is not None:
            data, self._ready = self._ready, None
            if not self._eof:
                self._start()
            return defer.succeed(data)
        if self._error is not None:
            return defer.fail(self._error)
        if self._eof:
            return defer.succeed(b"")
        self._waiter = defer.Deferred()
        return self._waiter

    def close(self) -> None:
        """Close the file now, or once the read in flight lands."""
        if not self._closed:
            self._closed = True
            if not self._reading:
                self._file.close()


@implementer(IPushProducer)
class MessageSender:
    """Write one message as a POP3 multi-line response body, with transport backpressure.

    Implements: IPushProducer. ``start()`` returns a Deferred that fires with the
    number of message octets sent (before stuffing) once the terminating ``.`` line is
    written, or fails if reading fails or the connection goes away first. The reader
    is closed either way.
    """

    def __init__(self, transport: Any, reader: ChunkReader, top_lines: int | None = None,
                 reactor: Any = None, on_progress: Callable[[], None] | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._transport = transport
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
            self._transport.write(self._stuffer.feed(data))
            if self._on_progress is not None:
                self._on_progress()
        if not data or (self._top is not None and self._top.done):
            self._transport.write(self._stuffer.terminator())
            self._finish(None)
            return
        self._pump()

    def _read_failed(self, failure: Failure) -> None:
        self._waiting = False
        self._finish(failure.value)  # a vanished file or I/O error ends this response

    def _finish(self, error: BaseException | None) -> None:
        if self._finished:
            return
        self._finished = True
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
