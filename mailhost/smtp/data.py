"""The DATA reader: finds end-of-data in bulk chunks, dot-unstuffs and enforces limits.

It is fed whole TCP chunks (the protocol is in raw mode during DATA), scans them with
``bytes.find`` rather than line by line, and finds ``CRLF.CRLF`` even when it is split
across chunks. Limits never end DATA early: past the size or line-length limit the
reader keeps consuming (and discarding) until end-of-data, so the client and server
stay in sync and the error is the reply to the final dot. This is the defect that
makes ``twisted.mail.smtp.ESMTP`` fall into command mode in the middle of a body.
Only ``CRLF.CRLF`` ends the data (not a bare LF), which closes the SMTP smuggling
hole of 2023.
"""

from __future__ import annotations

from collections.abc import Callable

from mailhost.smtp.reply import Reply

_MARK = b"\r\n."


class DataReader:
    """Consumes the DATA stream; hands unstuffed message bytes to ``sink``.

    ``feed`` returns None while more data is wanted, or the bytes that followed the
    final dot (pipelined commands) once end-of-data was seen. ``error`` then holds the
    Reply to send instead of accepting the message, if a limit was broken.
    """

    def __init__(self, sink: Callable[[bytes], None], max_size: int, max_line: int) -> None:
        self._sink = sink
        self.max_size = max_size
        self.max_line = max_line
        # The stream is judged as if it were preceded by CRLF, so a dot on the very
        # first line is handled like any other; those two octets are never emitted.
        self._pending = b"\r\n"
        self._skip = 2
        self._line_len = 0
        self.size = 0
        self.error: Reply | None = None
        self.done = False

    def _emit(self, data: bytes) -> None:
        if self._skip:
            cut = min(self._skip, len(data))
            data = data[cut:]
            self._skip -= cut
        if not data:
            return
        self.size += len(data)
        if self.error is not None:
            return
        self._check_lines(data)
        if self.size > self.max_size:
            self.error = Reply(552, "5.3.4", "Message size exceeds fixed limit")
        if self.error is not None:
            return
        self._sink(data)

    def _check_lines(self, data: bytes) -> None:
        last_nl = data.rfind(b"\n")
        if last_nl < 0:
            self._line_len += len(data)
        else:
            if self._line_len + last_nl > self.max_line:
                # Slow path only when a long line is possible within this chunk.
                first_nl = data.find(b"\n")
                longest = max(self._line_len + first_nl,
                              max(map(len, data[first_nl + 1:last_nl].split(b"\n")), default=0))
                if longest - 1 > self.max_line:  # the CR is not part of the line
                    self.error = Reply(500, "5.5.2", "Line too long")
            self._line_len = len(data) - last_nl - 1
        if self._line_len > self.max_line + 1:
            self.error = Reply(500, "5.5.2", "Line too long")

    def feed(self, chunk: bytes) -> bytes | None:
        if self.done:
            return chunk
        buf = self._pending + chunk if self._pending else chunk
        self._pending = b""
        i = 0
        n = len(buf)
        while True:
            j = buf.find(_MARK, i)
            if j < 0:
                # Keep a tail that may be the start of CRLF-dot.
                if buf.endswith(b"\r\n"):
                    keep = 2
                elif buf.endswith(b"\r"):
                    keep = 1
                else:
                    keep = 0
                keep = min(keep, n - i)
                self._emit(buf[i: n - keep])
                self._pending = buf[n - keep:]
                return None
            after = buf[j + 3: j + 5]
            if after == b"\r\n":
                self._emit(buf[i: j + 2])  # the CRLF ends the last line of the message
                self.done = True
                return buf[j + 5:]
            if len(after) < 2 and b"\r\n".startswith(after):
                # Cannot tell yet whether this is the end; wait for more bytes.
                self._emit(buf[i:j])
                self._pending = buf[j:]
                return None
            # A stuffed dot: emit through the CRLF, drop the dot.
            self._emit(buf[i: j + 2])
            i = j + 3


class ChunkReader:
    """Consumes one BDAT chunk (RFC 3030): exactly ``length`` octets, no dot-stuffing.

    Same contract as DataReader (``feed``/``error``/``size``/``done``). ``offset`` is
    what earlier chunks of the message already held, for the size limit. A chunk is
    always consumed to its end, even after an error, so the session stays in sync.
    """

    def __init__(self, sink: Callable[[bytes], None] | None, length: int, max_size: int,
                 offset: int = 0) -> None:
        self._sink = sink
        self.remaining = length
        self.max_size = max_size
        self.size = offset
        self.error: Reply | None = None
        self.done = length == 0

    def feed(self, chunk: bytes) -> bytes | None:
        if self.done:
            return chunk
        take = min(len(chunk), self.remaining)
        data, rest = chunk[:take], chunk[take:]
        self.remaining -= take
        self.size += take
        if self.size > self.max_size and self.error is None:
            self.error = Reply(552, "5.3.4", "Message size exceeds fixed limit")
        if data and self.error is None and self._sink is not None:
            self._sink(data)
        if self.remaining:
            return None
        self.done = True
        return rest
