"""Fault injection for the test mail host: scripted replies, delays and dropped connections.

A ``FaultFactory`` (a ``WrappingFactory``) sits around each listener's real factory,
inside any implicit-TLS layer, so it sees plaintext client command lines before the
real protocol does and server output before the client does. It knows just enough of
each protocol's framing to keep message bodies from being read as commands: SMTP DATA
(entered when the server answers 354), SMTP BDAT chunks (the octets counted on the
BDAT line, which the client sends without waiting for a reply), IMAP literals (``{n}``
and ``{n+}``), POP3 multi-line responses, and SASL/IDLE continuation lines.

A failed command is answered by the wrapper and never reaches the real protocol. So
that replies stay in order under pipelining, the wrapper first waits until the real
protocol has answered everything it was given before. Commands after which the
protocol's framing may change (DATA, STARTTLS, AUTH, IDLE, synchronizing literals)
are barriers: later input waits until the server has answered them, exactly as a
conforming client waits.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

from mailhost.smtp.server import MAX_COMMAND_LINE

log = Logger()

#: Pseudo-command naming the server greeting (for ``delay``, ``fail`` and ``drop_after``).
GREETING = "GREETING"

#: A line this long without a line end is passed through uninterpreted (the real
#: protocol enforces its own limits).
MAX_LINE = 128 * 1024

_LITERAL = re.compile(rb"\{(\d+)(\+?)\}\r?\n\Z")


@dataclass
class Fault:
    """One scripted fault. ``times=None`` means every time; ``hits`` counts uses."""

    protocol: str  # "smtp", "pop3" or "imap"
    action: str  # "fail", "delay" or "drop_after"
    command: str  # upper-case verb, or GREETING
    code: int | None = None
    message: str = ""
    match: str | None = None
    times: int | None = 1
    seconds: float = 0.0
    hits: int = field(default=0, compare=False)

    def matches(self, verb: str, line: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if not _verb_matches(self.command, verb):
            return False
        return self.match is None or self.match.lower() in line.lower()

    def describe(self) -> str:
        what = f"{self.protocol} {self.action} {self.command}"
        if self.action == "fail":
            what += f" -> {self.code or ''} {self.message}".rstrip()
        if self.action == "delay":
            what += f" {self.seconds:g}s"
        if self.match:
            what += f" (match {self.match!r})"
        left = "always" if self.times is None else f"{self.times - self.hits} left"
        return f"{what}, {left}"


def _verb_matches(wanted: str, verb: str) -> bool:
    """"FETCH" matches FETCH and UID FETCH; "UID FETCH" only the latter."""
    return wanted == verb or (verb.startswith("UID ") and verb[4:] == wanted)


# Commands whose answer is the authentication verdict, per protocol.
AUTH_COMMANDS = {"smtp": ("AUTH",), "pop3": ("PASS", "AUTH", "APOP"),
                 "imap": ("LOGIN", "AUTHENTICATE")}

# Default replies for ``fail`` when no code/message is given.
_DEFAULT_FAIL = {"smtp": (451, "4.3.0 Requested action aborted: injected fault"),
                 "pop3": (None, "injected fault"), "imap": (None, "injected fault")}
_AUTH_FAIL = {"smtp": (535, "5.7.8 Authentication credentials invalid"),
              "pop3": (None, "[AUTH] Authentication failed"),
              "imap": (None, "[AUTHENTICATIONFAILED] Authentication failed")}


class FaultSet:
    """The scripted faults of one protocol (``host.smtp``, ``host.pop3``, ``host.imap``).

    Every method is for the reactor thread; ``SyncMailHost`` proxies them.
    """

    def __init__(self, protocol: str, registry: list[Fault]) -> None:
        self.protocol = protocol
        self._registry = registry

    def _add(self, fault: Fault) -> Fault:
        self._registry.append(fault)
        return fault

    def fail(self, command: str, code: int | None = None, message: str | None = None,
             match: str | None = None, times: int | None = 1) -> Fault:
        """Answer ``command`` with an error instead of passing it on.

        SMTP: ``code message`` (default 451). POP3: ``-ERR message``. IMAP:
        ``<tag> NO message`` (``code`` is ignored for POP3 and IMAP). With
        ``command="greeting"`` the greeting is replaced and the connection closed.
        ``match`` is a case-insensitive substring of the command line.
        """
        dcode, dmsg = _DEFAULT_FAIL[self.protocol]
        return self._add(Fault(self.protocol, "fail", command.strip().upper(),
                               code if code is not None else dcode,
                               message if message is not None else dmsg, match, times))

    def delay(self, command: str, seconds: float, match: str | None = None,
              times: int | None = 1) -> Fault:
        """Hold ``command`` (or ``"greeting"``) for ``seconds`` before passing it on."""
        return self._add(Fault(self.protocol, "delay", command.strip().upper(),
                               match=match, times=times, seconds=seconds))

    def drop_after(self, command: str, match: str | None = None,
                   times: int | None = 1) -> Fault:
        """Pass ``command`` on, then cut the connection before the client sees the reply.

        For SMTP ``DATA`` (and ``BDAT``) the client sends the whole message (chunk)
        first; the connection is cut instead of the final reply, so nothing is stored.
        An IMAP command with literals is cut once they are all in, so it runs.
        ``"greeting"`` cuts the connection as soon as it is made.
        """
        return self._add(Fault(self.protocol, "drop_after", command.strip().upper(),
                               match=match, times=times))

    def reject_auth(self, times: int | None = None) -> list[Fault]:
        """Refuse every login attempt (SMTP 535, POP3 -ERR [AUTH], IMAP NO)."""
        code, message = _AUTH_FAIL[self.protocol]
        return [self._add(Fault(self.protocol, "fail", verb, code, message, None, times))
                for verb in AUTH_COMMANDS[self.protocol]]

    def faults(self) -> list[Fault]:
        return [f for f in self._registry if f.protocol == self.protocol]

    def clear(self) -> None:
        self._registry[:] = [f for f in self._registry if f.protocol != self.protocol]


def _find(registry: list[Fault], protocol: str, verb: str, line: str,
          actions: tuple[str, ...] = ("delay", "fail", "drop_after")) -> Fault | None:
    """The first live fault for this command, delays first (a delayed command can
    still fail once its delay is over)."""
    for action in actions:
        for fault in registry:
            if fault.protocol == protocol and fault.action == action \
                    and fault.matches(verb, line):
                return fault
    return None


class _FaultProtocol(ProtocolWrapper):
    """The per-connection interceptor; subclasses know one protocol's framing."""

    protocol_name = ""
    barriers: frozenset[str] = frozenset()

    def __init__(self, factory: FaultFactory, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self.registry = factory.registry
        self.clock = factory.clock
        self._inbuf = b""
        self._raw_left = 0  # bytes to pass through uninterpreted
        self._long_line = False  # inside an over-long line: pass through to its end
        self._held = False  # input processing paused (delay, barrier, quiet wait)
        self._barrier = False
        self._pending_line: bytes | None = None  # a command waiting for quiet
        self._hold_output: list[bytes] | None = None
        self._mute = False
        self._gone = False
        self._timers: list[Any] = []
        self._sasl = False  # the next client line answers a SASL challenge
        self._was_tls = False

    # -- connection -----------------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:  # noqa: N802
        greeting = _find(self.registry, self.protocol_name, GREETING, "")
        if greeting is not None:
            greeting.hits += 1
            if greeting.action == "delay":
                self._hold_output = []
                self._later(greeting.seconds, self._release_output)
            elif greeting.action == "fail":
                self._mute = True
            elif greeting.action == "drop_after":
                self._mute = True
        super().makeConnection(transport)
        self._was_tls = bool(getattr(self.transport, "TLS", False))
        if greeting is not None and greeting.action == "fail":
            self.transport.write(self._fail_reply(greeting, None))
            self.transport.loseConnection()
        elif greeting is not None and greeting.action == "drop_after":
            self.transport.abortConnection()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self._gone = True
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []
        super().connectionLost(reason)

    def _later(self, seconds: float, fn: Callable[[], None]) -> None:
        self._timers = [t for t in self._timers if t.active()]
        self._timers.append(self.clock.callLater(seconds, fn))

    def _drop(self) -> None:
        self._mute = True
        self._inbuf = b""
        self._held = True
        self.transport.abortConnection()

    # -- output (server -> client) --------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._mute or self._gone:
            return
        if self._hold_output is not None:
            self._hold_output.append(data)
            return
        self.transport.write(data)
        self._scan_output(data)

    def writeSequence(self, data: list[bytes]) -> None:  # noqa: N802
        self.write(b"".join(data))

    def _release_output(self) -> None:
        held, self._hold_output = self._hold_output or [], None
        for chunk in held:
            self.write(chunk)

    def _scan_output(self, data: bytes) -> None:
        """Track replies; subclasses call ``_answered()`` as replies complete."""

    def _answered(self) -> None:
        """The server finished a reply: barriers and quiet waits may move on."""
        if self._barrier:
            self._barrier = False
            self._after_barrier()
            self._resume()
        elif self._pending_line is not None and self._quiet():
            self._resume()

    def _after_barrier(self) -> None:
        pass

    def _resume(self) -> None:
        if not self._gone:
            self._later(0, self._pump)

    # -- input (client -> server) ---------------------------------------------------

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._mute or self._gone:
            return
        self._inbuf += data
        self._pump()

    def _pump(self) -> None:
        while not self._gone and not self._mute:
            if self._pending_line is not None:
                if not self._quiet() or self._barrier:
                    return
                line, self._pending_line = self._pending_line, None
                self._command(line)
                continue
            if self._barrier or self._held or not self._inbuf:
                return
            if self._raw_left:
                chunk = self._inbuf[: self._raw_left]
                self._inbuf = self._inbuf[len(chunk):]
                self._raw_left -= len(chunk)
                self._forward_raw(chunk, not self._raw_left)
                if not self._raw_left:
                    self._raw_done()
                continue
            if self._consume_special():
                continue
            end = self._inbuf.find(b"\n")
            if end < 0:
                if len(self._inbuf) > MAX_LINE:
                    self._long_line = True
                    chunk, self._inbuf = self._inbuf, b""
                    self._forward(chunk)
                return
            line, self._inbuf = self._inbuf[: end + 1], self._inbuf[end + 1:]
            if self._long_line:
                self._long_line = False
                self._forward(line)
                continue
            self._line(line)

    def _forward(self, data: bytes) -> None:
        if self.wrappedProtocol is not None and not self._gone:
            self.wrappedProtocol.dataReceived(data)

    def _line(self, line: bytes) -> None:
        """A complete client line in command mode."""
        verb = self._verb(line)
        if verb is None:  # continuation or unparseable: the real protocol decides
            self._forward_command(line, None)
            return
        text = line.decode("utf-8", "replace")
        fault = _find(self.registry, self.protocol_name, verb, text)
        if fault is not None and fault.action == "delay":
            fault.hits += 1
            self._held = True

            def go(line: bytes = line) -> None:
                self._held = False
                self._line_after_delay(line)

            self._later(fault.seconds, go)
            return
        if fault is not None and fault.action == "fail":
            # Answer only once the real protocol has answered what it already has.
            self._pending_line = line
            if self._quiet() and not self._barrier:
                self._pending_line = None
                self._command(line)
            return
        self._forward_command(line, verb, drop=fault if fault and fault.action == "drop_after"
                              else None)

    def _line_after_delay(self, line: bytes) -> None:
        verb = self._verb(line) or ""
        text = line.decode("utf-8", "replace")
        fault = _find(self.registry, self.protocol_name, verb, text, ("fail", "drop_after"))
        if fault is not None and fault.action == "fail":
            self._pending_line = line
        else:
            self._forward_command(line, verb,
                                  drop=fault if fault and fault.action == "drop_after" else None)
        self._pump()

    def _command(self, line: bytes) -> None:
        """Answer a failed command ourselves (the server is quiet now)."""
        verb = self._verb(line) or ""
        text = line.decode("utf-8", "replace")
        fault = _find(self.registry, self.protocol_name, verb, text, ("fail",))
        if fault is None:  # cleared meanwhile
            self._forward_command(line, verb)
            return
        fault.hits += 1
        log.debug("injected {fault}", fault=fault.describe())
        self.write(self._fail_reply(fault, line))
        self._failed(line, verb)

    def _forward_command(self, line: bytes, verb: str | None, drop: Fault | None = None) -> None:
        if drop is not None:
            drop.hits += 1
            if self._drop_later(verb or ""):
                self._note_forwarded(line, verb)
                self._forward(line)
                return
            self._forward(line)
            self._drop()
            return
        self._note_forwarded(line, verb)
        if verb in self.barriers:
            self._barrier = True
        self._forward(line)

    # -- protocol hooks -------------------------------------------------------------

    def _verb(self, line: bytes) -> str | None:
        """The command verb of a command line, or None for a continuation line."""
        if self._sasl:
            return None
        return _first_word(line)

    def _check_tls_upgrade(self) -> None:
        """CVE-2011-0411: what came before a TLS handshake must not count after it."""
        tls = bool(getattr(self.transport, "TLS", False))
        if tls and not self._was_tls:
            self._was_tls = True
            self._inbuf = b""

    def _fail_reply(self, fault: Fault, line: bytes | None) -> bytes:
        raise NotImplementedError

    def _quiet(self) -> bool:
        """True when every command passed on so far has been answered."""
        raise NotImplementedError

    def _note_forwarded(self, line: bytes, verb: str | None) -> None:
        pass

    def _failed(self, line: bytes, verb: str) -> None:
        """After an injected failure (e.g. skip the literal the command carried)."""

    def _consume_special(self) -> bool:
        """Consume non-line input (an SMTP body); True if anything was consumed."""
        return False

    def _forward_raw(self, chunk: bytes, last: bool) -> None:
        """Pass on octets of a literal or chunk (``last``: its final piece)."""
        self._forward(chunk)

    def _raw_done(self) -> None:
        pass

    def _drop_later(self, verb: str) -> bool:
        """True if drop_after(verb) cuts the connection later (SMTP DATA: after the body)."""
        return False


def _first_word(line: bytes) -> str:
    return line.split(None, 1)[0].decode("ascii", "replace").upper() if line.split() else ""


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


_POP3_MULTI_ALWAYS = frozenset({"CAPA", "RETR", "TOP"})
_POP3_MULTI_NOARG = frozenset({"LIST", "UIDL"})


class POP3FaultProtocol(_FaultProtocol):
    """POP3: one response per line, multi-line ones end with CRLF.CRLF; '+ ' is SASL."""

    protocol_name = "pop3"
    barriers = frozenset({"STLS", "AUTH", "_SASL"})

    def __init__(self, factory: FaultFactory, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self._pending: deque[bool] = deque([False])  # multi-line expected, per command
        self._out = b""
        self._in_multi = False

    def _fail_reply(self, fault: Fault, line: bytes | None) -> bytes:
        return f"-ERR {fault.message}\r\n".encode()

    def _quiet(self) -> bool:
        return not self._pending and not self._in_multi

    def _note_forwarded(self, line: bytes, verb: str | None) -> None:
        if verb is None and self._sasl:
            self._sasl = False
            self._barrier = True
            self._pending.append(False)
            return
        args = line.split()[1:]
        multi = verb in _POP3_MULTI_ALWAYS or (verb in _POP3_MULTI_NOARG and not args)
        self._pending.append(multi)

    def _scan_output(self, data: bytes) -> None:
        self._out += data
        while self._out:
            if self._in_multi:
                end = self._out.find(b"\r\n.\r\n")
                if end < 0:
                    self._out = self._out[-4:]
                    return
                self._out = self._out[end + 5:]
                self._in_multi = False
                self._answered()
                continue
            nl = self._out.find(b"\r\n")
            if nl < 0:
                return
            first, self._out = self._out[:nl], self._out[nl:]
            multi = self._pending.popleft() if self._pending else False
            if first.startswith(b"+OK") and multi:
                self._in_multi = True  # the terminator search starts at this CRLF
                continue
            self._out = self._out[2:]
            if first.startswith(b"+ ") or first == b"+":
                self._sasl = True
            self._answered()

    def _after_barrier(self) -> None:
        self._check_tls_upgrade()


class IMAPFaultProtocol(_FaultProtocol):
    """IMAP: tagged completions, literals both ways, AUTHENTICATE/IDLE continuations."""

    protocol_name = "imap"
    barriers = frozenset({"STARTTLS", "AUTHENTICATE", "IDLE", "_SYNC_LITERAL", "_CONT"})

    def __init__(self, factory: FaultFactory, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self._tags: list[bytes] = []  # forwarded commands not yet completed
        self._current: bytes | None = None  # tag of the command whose line continues
        self._cont_verb: str | None = None  # AUTHENTICATE/IDLE waiting for client lines
        self._cont_line = False  # the next client line answers a '+' continuation
        self._sync_literal = 0  # a synchronizing literal announced, waiting for '+'
        self._swallow = False  # skip the rest of a failed command
        self._drop_at_end = False  # drop_after a command with literals: cut once it is all in
        self._out = b""
        self._out_literal = 0
        self._last_plus = False

    def _verb(self, line: bytes) -> str | None:
        if self._cont_line or self._current is not None:
            return None
        parts = line.split(None, 3)
        if len(parts) < 2:
            return None
        verb = parts[1].decode("ascii", "replace").upper()
        if verb == "UID" and len(parts) > 2:
            verb = "UID " + parts[2].decode("ascii", "replace").upper()
        return verb

    def _fail_reply(self, fault: Fault, line: bytes | None) -> bytes:
        tag = line.split(None, 1)[0].decode("ascii", "replace") if line and line.split() else "*"
        return f"{tag} NO {fault.message}\r\n".encode()

    def _quiet(self) -> bool:
        return not self._tags and self._current is None and not self._cont_verb

    def _literal_after(self, line: bytes) -> tuple[int, bool] | None:
        m = _LITERAL.search(line)
        if m is None:
            return None
        return int(m.group(1)), bool(m.group(2))

    def _note_forwarded(self, line: bytes, verb: str | None) -> None:
        if self._cont_line:
            self._cont_line = False
            if self._cont_verb == "AUTHENTICATE":
                self._barrier = True  # another challenge or the completion follows
            elif self._cont_verb == "IDLE":
                self._barrier = True  # DONE: wait for the tagged completion
            return
        if verb is not None:
            tag = line.split(None, 1)[0]
            self._tags.append(tag)
            self._current = tag
            if verb in ("AUTHENTICATE", "IDLE"):
                self._cont_verb = verb
        literal = self._literal_after(line)
        if literal is None:
            self._current = None
            return
        size, plus = literal
        if plus:
            self._raw_left = size
        else:
            self._sync_literal = size
            self._barrier = True

    def _forward_command(self, line: bytes, verb: str | None, drop: Fault | None = None) -> None:
        if drop is not None and self._literal_after(line) is not None:
            # The command runs only once its literals are in: pass them on, cut after.
            drop.hits += 1
            self._drop_at_end = True
            drop = None
        super()._forward_command(line, verb, drop)
        if self._drop_at_end and self._current is None and not self._gone:
            self._drop_at_end = False
            self._drop()

    def _failed(self, line: bytes, verb: str) -> None:
        literal = self._literal_after(line)
        if literal is not None and literal[1]:
            # LITERAL+: the client sends the literal anyway; swallow the whole command.
            self._swallow = True
            self._raw_left = literal[0]

    def _forward(self, data: bytes) -> None:
        if self._swallow:
            return
        super()._forward(data)

    def _line(self, line: bytes) -> None:
        if self._swallow:
            literal = self._literal_after(line)
            if literal is not None and literal[1]:
                self._raw_left = literal[0]
            else:
                self._swallow = False
            return
        super()._line(line)

    def _scan_output(self, data: bytes) -> None:
        self._out += data
        while self._out:
            if self._out_literal:
                skip = min(self._out_literal, len(self._out))
                self._out = self._out[skip:]
                self._out_literal -= skip
                continue
            nl = self._out.find(b"\r\n")
            if nl < 0:
                if len(self._out) > MAX_LINE:
                    self._out = b""
                return
            line, self._out = self._out[: nl + 2], self._out[nl + 2:]
            m = _LITERAL.search(line)
            if m is not None:
                self._out_literal = int(m.group(1))
                continue
            if line.startswith(b"+"):
                self._on_continuation()
                continue
            parts = line.split(None, 2)
            if len(parts) >= 2 and parts[0] in self._tags \
                    and parts[1].upper() in (b"OK", b"NO", b"BAD"):
                self._tags.remove(parts[0])
                if parts[0] == self._current:
                    self._current = None
                    self._sync_literal = 0
                    self._drop_at_end = False  # refused before its literal: nothing to cut
                if not self._tags:
                    self._cont_verb = None
                self._answered()

    def _on_continuation(self) -> None:
        if self._sync_literal:
            self._raw_left, self._sync_literal = self._sync_literal, 0
        elif self._cont_verb:
            self._cont_line = True
        self._answered()

    def _after_barrier(self) -> None:
        self._check_tls_upgrade()


_DIALECTS = {"smtp": SMTPFaultProtocol, "submission": SMTPFaultProtocol,
             "pop3": POP3FaultProtocol, "imap": IMAPFaultProtocol}


class FaultFactory(WrappingFactory):
    """Wraps one listener's factory with the interceptor for its protocol."""

    def __init__(self, kind: str, wrapped: IProtocolFactory, registry: list[Fault],
                 clock: Any) -> None:
        super().__init__(wrapped)
        self.kind = kind
        self.protocol = _DIALECTS[kind]
        self.registry = registry
        self.clock = clock
        self._empty_waiters: list[defer.Deferred] = []

    def drop_connections(self) -> None:
        """Abort every open connection (``MailHost.reset`` and ``stop``)."""
        for proto in list(self.protocols):
            proto.transport.abortConnection()

    def wait_empty(self) -> defer.Deferred:
        """Deferred firing once no connection of this listener is open."""
        if not self.protocols:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._empty_waiters.append(d)
        return d

    def unregisterProtocol(self, p: Any) -> None:  # noqa: N802
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._empty_waiters = self._empty_waiters, []
            for d in waiters:
                d.callback(None)


def make_wrapper(registry: list[Fault], clock: Any,
                 made: list[FaultFactory]) -> Callable[[str, IProtocolFactory], IProtocolFactory]:
    """A ``wrap_factory`` for ``makeService``: fault injection inside implicit TLS."""

    def wrap(kind: str, factory: IProtocolFactory) -> IProtocolFactory:
        if isinstance(factory, TLSMemoryBIOFactory):
            # Go inside the TLS layer so the interceptor sees plaintext.
            inner = FaultFactory(kind, factory.wrappedFactory, registry, clock)
            made.append(inner)
            factory.wrappedFactory = inner
            return factory
        outer = FaultFactory(kind, factory, registry, clock)
        made.append(outer)
        return outer

    return wrap
