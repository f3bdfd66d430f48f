"""SMTP framing for the fault interceptor: replies, DATA bodies, BDAT chunks and SASL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailhost.smtp.server import MAX_COMMAND_LINE
from mailhost.testing.faults.interceptor import _FaultProtocol
from mailhost.testing.faults.registry import Fault

if TYPE_CHECKING:
    from mailhost.testing.faults.factory import FaultFactory


def _bdat_size(line: bytes) -> int | None:
    """How many chunk octets the server reads after this BDAT line; None if it reads none.

    Mirrors ``SMTPServer``'s parse, since the two must agree on where the chunk ends:
    a line the server refuses outright (too long, not UTF-8, bad syntax) has no chunk,
    while a well-formed BDAT it refuses (no MAIL, say) still has its chunk read.
    """
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    if len(line) > MAX_COMMAND_LINE:
        return None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    verb, _, arg = text.partition(" ")
    words = arg.strip(" ").split(" ")
    if (verb.upper() != "BDAT" or not 1 <= len(words) <= 2 or not words[0].isdigit()
            or len(words[0]) > 12 or (len(words) == 2 and words[1].upper() != "LAST")):
        return None
    try:
        return int(words[0])
    except ValueError:
        return None


class SMTPFaultProtocol(_FaultProtocol):
    """SMTP: one reply per client line; DATA bodies run to CRLF.CRLF; 334 starts SASL.

    BDAT is no barrier: its chunk follows the command line at once (RFC 3030), and the
    server answers only once it has the whole chunk.
    """

    protocol_name = "smtp"
    barriers = frozenset({"DATA", "STARTTLS", "AUTH", "_SASL"})

    def __init__(self, factory: FaultFactory, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self._outstanding = 1  # the greeting
        self._out_tail = b""
        self._last_code = 0
        self._in_data = False
        self._data_tail = b""
        self._drop_at_data_end = False
        self._chunk_fate = ""  # the BDAT chunk in flight: "", "swallow" or "drop"
        self._eat_replies = 0  # replies to our own RSETs, kept from the client
        self._eaten = b""

    def _fail_reply(self, fault: Fault, line: bytes | None) -> bytes:
        return f"{fault.code or 451} {fault.message}\r\n".encode()

    def _quiet(self) -> bool:
        return self._outstanding <= 0

    def _note_forwarded(self, line: bytes, verb: str | None) -> None:
        self._outstanding += 1
        if verb is None and self._sasl:
            self._sasl = False
            self._barrier = True

    def _scan_output(self, data: bytes) -> None:
        buf = self._out_tail + data
        lines = buf.split(b"\r\n")
        self._out_tail = lines.pop()
        for line in lines:
            if len(line) >= 4 and line[:3].isdigit() and line[3:4] == b" ":
                self._outstanding -= 1
                self._last_code = int(line[:3])
                self._answered()
            elif len(line) == 3 and line.isdigit():
                self._outstanding -= 1
                self._last_code = int(line)
                self._answered()

    def _after_barrier(self) -> None:
        if self._last_code == 354:
            self._in_data = True
            self._data_tail = b"\r\n"
        elif self._last_code == 334:
            self._sasl = True
        self._check_tls_upgrade()
        if self._drop_at_data_end and not self._in_data:
            self._drop_at_data_end = False  # DATA was refused; nothing to cut

    def _consume_special(self) -> bool:
        if not self._in_data:
            return False
        window = self._data_tail + self._inbuf
        end = window.find(b"\r\n.\r\n")
        if end < 0:
            chunk, self._inbuf = self._inbuf, b""
            self._data_tail = window[-4:]
            self._forward(chunk)
            return True
        stop = end + 5 - len(self._data_tail)  # index in _inbuf just past ".\r\n"
        body, self._inbuf = self._inbuf[:stop], self._inbuf[stop:]
        self._in_data = False
        self._data_tail = b""
        if self._drop_at_data_end:
            self._drop_at_data_end = False
            # Hold back the terminator's line end: the transaction never completes.
            self._forward(body[: max(0, stop - 2)])
            self._drop()
            return True
        self._outstanding += 1
        self._forward(body)
        return True

    def _forward_command(self, line: bytes, verb: str | None, drop: Fault | None = None) -> None:
        size = _bdat_size(line) if verb == "BDAT" else None
        if size is None:
            super()._forward_command(line, verb, drop)
            return
        if drop is not None:
            drop.hits += 1
            if size == 0:
                # Hold back the line end: "BDAT 0 LAST" never runs, nothing commits.
                self._forward(line[:-1])
                self._drop()
                return
            self._chunk_fate = "drop"  # cut once the client has sent the whole chunk
        else:
            self._note_forwarded(line, verb)
        self._forward(line)
        self._raw_left = size

    def _forward_raw(self, chunk: bytes, last: bool) -> None:
        if self._chunk_fate == "swallow":
            return
        if self._chunk_fate == "drop" and last:
            # Hold back the chunk's last octet: the server never answers or commits it.
            self._forward(chunk[:-1])
            self._drop()
            return
        self._forward(chunk)

    def _raw_done(self) -> None:
        self._chunk_fate = ""

    def _failed(self, line: bytes, verb: str) -> None:
        size = _bdat_size(line) if verb == "BDAT" else None
        if size is None:
            return
        # The client sends the chunk regardless: skip it, as the server never saw the BDAT.
        self._raw_left = size
        self._chunk_fate = "swallow" if size else ""
        # A real server ends the transaction when a chunk fails, so that later chunks
        # cannot commit a message with a hole in it: RSET it, and keep the 250 back.
        self._eat_replies += 1
        self._outstanding += 1
        self._forward(b"RSET\r\n")

    def write(self, data: bytes) -> None:
        if self._eat_replies and not (self._mute or self._gone):
            buf = self._eaten + data
            while self._eat_replies:
                nl = buf.find(b"\r\n")
                if nl < 0:
                    self._eaten = buf
                    return
                line, buf = buf[:nl], buf[nl + 2:]
                if line[3:4] != b"-":
                    self._eat_replies -= 1
                    self._outstanding -= 1
                    self._answered()
            self._eaten, data = b"", buf
            if not data:
                return
        super().write(data)

    def _drop_later(self, verb: str) -> bool:
        if verb == "DATA":
            self._drop_at_data_end = True
            self._barrier = True
            return True
        return False
