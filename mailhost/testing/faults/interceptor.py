"""The per-connection fault interceptor: the base that each protocol's framing extends.

``_FaultProtocol`` sits between the client and the real protocol. It splits client
input into command lines, answers, holds or cuts the ones a fault matches, and keeps
replies in order by waiting until the server is quiet. The subclasses in ``smtp``,
``pop3`` and ``imap`` fill in the hooks that say where a reply ends and where a
message body or literal runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper

from mailhost.testing.faults.registry import GREETING, Fault, _find

if TYPE_CHECKING:
    from mailhost.testing.faults.factory import FaultFactory

# The namespace the injected-fault debug lines had before the split, kept for log filters.
log = Logger(namespace="mailhost.testing.faults")

#: A line this long without a line end is passed through uninterpreted (the real
#: protocol enforces its own limits).
MAX_LINE = 128 * 1024


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
