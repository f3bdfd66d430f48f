"""Live sessions of every listener: who is mid-command, and a graceful drain.

A protocol-agnostic ``ProtocolWrapper`` follows each connection's command/reply
rhythm on the wire (SMTP final ``NNN`` replies and DATA bodies, POP3 ``+OK``/``-ERR``,
IMAP tags and literals). That one piece of wire-reading serves two needs:
- metrics time each command from its line to its final reply;
- on shutdown, ``drain`` closes idle sessions at once with the protocol's own goodbye
  (SMTP ``421 4.3.2``, IMAP ``* BYE``), lets an SMTP transaction that is under way
  finish (its ``250`` means the mail is durable) within a grace period, and ends POP3
  sessions without a QUIT, so no pending DELE is applied (RFC 1939).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IProtocolFactory
from twisted.protocols.policies import WrappingFactory

from mailhost.wrapping import InterfaceCopyingWrapper

_SMTP_REPLY = re.compile(rb"^(\d{3})(?: |\r?$)")
_LITERAL = re.compile(rb"\{(\d+)\+?\}\r?\n?$")

CommandObserver = Callable[[str, str, float], None]  # (kind, verb, seconds)


class TrackedProtocol(InterfaceCopyingWrapper):
    """Follows one session's commands and replies; see the module docstring."""

    def __init__(self, factory: TrackingFactory, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self.kind = factory.kind
        self.tracker = factory.tracker
        self.pending: deque[tuple[str, str, float]] = deque(maxlen=256)
        self.inbuf = b""
        self.in_data = False  # SMTP: between 354 and the final dot
        self.in_transaction = False  # SMTP: from MAIL until the final reply or RSET
        self.skip = 0  # IMAP literal / SMTP BDAT chunk octets still to pass
        self.draining = False
        self.closed = False

    # -- bookkeeping --------------------------------------------------------------
    def connectionMade(self) -> None:  # noqa: N802
        self.tracker.sessions.add(self)
        self.tracker.connected(self.kind)
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.closed = True
        self.tracker.sessions.discard(self)
        self.tracker.disconnected(self.kind, self)
        super().connectionLost(reason)

    @property
    def busy(self) -> bool:
        """True while ending the session now would cut off work under way."""
        if self.kind in ("smtp", "submission"):
            return self.in_transaction or self.in_data or bool(self.pending)
        if self.kind == "imap":
            return any(verb != "IDLE" for _, verb, _ in self.pending)
        return False

    # -- client -> server ---------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        try:
            refuse = self._scan_input(data)
        except Exception:  # noqa: BLE001 - tracking must never break a session
            self.inbuf, refuse = b"", False
        if refuse:
            self.goodbye()
            return
        super().dataReceived(data)

    def _scan_input(self, data: bytes) -> bool:
        """Track commands in ``data``; True if a new command arrives while draining."""
        if self.in_data:
            buf = self.inbuf[-4:] + data
            end = buf.find(b"\r\n.\r\n")
            if end < 0:
                self.inbuf = buf[-4:]
                return False
            self.in_data = False
            self.pending.append(("", "DATA-END", time.monotonic()))
            data = buf[end + 5:]
            self.inbuf = b""
        buf = self.inbuf + data
        pos, size = 0, len(buf)
        while pos < size:
            if self.skip:
                n = min(self.skip, size - pos)
                self.skip -= n
                pos += n
                continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            line, pos = buf[pos:nl + 1], nl + 1
            if self._command(line) and self.draining and not self.busy_before(line):
                return True
            if self.in_data:
                self.inbuf = b""
                return self._scan_input(buf[pos:])
        self.inbuf = buf[pos:][-8192:]
        return False

    def busy_before(self, line: bytes) -> bool:
        """While draining, SMTP lines inside an open transaction still go through."""
        return self.kind in ("smtp", "submission") and self.in_transaction

    def _command(self, line: bytes) -> bool:
        words = line.strip().split(None, 3)
        if self.kind == "imap":
            lit = _LITERAL.search(line)
            if lit:
                self.skip = int(lit.group(1))
            if len(words) >= 2 and words[0] not in (b"*", b"+"):
                verb = words[1].upper()
                if verb == b"UID" and len(words) >= 3:
                    verb = b"UID " + words[2].upper()
                self.pending.append((words[0].decode("ascii", "replace"),
                                     verb.decode("ascii", "replace")[:20], time.monotonic()))
                return True
            return False
        if not words:
            return False
        verb = words[0].upper().decode("ascii", "replace")[:12]
        if not verb.isalpha():
            return False
        if self.kind in ("smtp", "submission"):
            if verb == "MAIL":
                self.in_transaction = True
            elif verb == "BDAT" and len(words) > 1 and words[1].isdigit():
                self.skip = int(words[1])  # the chunk's octets are not commands
                if len(words) > 2 and words[2].upper() == b"LAST":
                    verb = "BDAT-LAST"
        self.pending.append(("", verb, time.monotonic()))
        return True

    # -- server -> client ---------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.pending:
            try:
                self._scan_output(data)
            except Exception:  # noqa: BLE001
                self.pending.clear()
        super().write(data)
        if self.draining and not self.busy and not self.closed:
            self.tracker.reactor.callLater(0, self.goodbye)

    def writeSequence(self, data: list[bytes]) -> None:  # noqa: N802
        self.write(b"".join(data))

    def _scan_output(self, data: bytes) -> None:
        for line in data.split(b"\n", 63):  # the first 64 lines; never the whole chunk
            if not self.pending:
                return
            if self.kind == "imap":
                tag = line.split(b" ", 1)[0].decode("ascii", "replace")
                if tag in ("*", "+"):
                    continue
                for i, (t, verb, start) in enumerate(self.pending):
                    if t == tag:
                        del self.pending[i]
                        self.tracker.observe(self.kind, verb, start)
                        break
            elif self.kind == "pop3":
                if line.startswith((b"+OK", b"-ERR")):
                    _, verb, start = self.pending.popleft()
                    self.tracker.observe(self.kind, verb, start)
            else:
                m = _SMTP_REPLY.match(line)
                if not m:
                    continue
                _, verb, start = self.pending.popleft()
                self.tracker.observe(self.kind, verb, start)
                code = m.group(1)
                if verb == "DATA" and code == b"354":
                    self.in_data = True
                elif verb in ("DATA-END", "BDAT-LAST", "RSET") or (verb in ("MAIL", "DATA")
                                                     and code[:1] != b"2"
                                                     and code != b"354"):
                    self.in_transaction = False

    # -- shutdown -----------------------------------------------------------------
    def goodbye(self) -> None:
        """End the session the way this protocol says goodbye, and close."""
        if self.closed or self.transport is None:
            return
        self.closed = True
        hostname = self.tracker.hostname
        if self.kind in ("smtp", "submission"):
            self.transport.write(
                f"421 4.3.2 {hostname} Service shutting down\r\n".encode())
        elif self.kind == "imap":
            self.transport.write(b"* BYE Server shutting down\r\n")
        # POP3: no QUIT, so nothing marked with DELE is deleted (RFC 1939).
        # Only idle sessions are told goodbye, so no transfer is under way; a producer
        # still registered (IMAP's output gate) would keep a TLS transport from ever
        # starting its close (close_notify, FIN) until the drain's abort, a reset.
        self.transport.unregisterProducer()
        self.transport.loseConnection()


class TrackingFactory(WrappingFactory):
    protocol = TrackedProtocol
    noisy = False

    def __init__(self, wrapped: IProtocolFactory, kind: str, tracker: SessionTracker) -> None:
        super().__init__(wrapped)
        self.kind = kind
        self.tracker = tracker

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)


class SessionTracker:
    """Every live session of a mail host, with metrics hooks and a graceful drain."""

    def __init__(self, hostname: str, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.hostname = hostname
        self.reactor = reactor
        self.sessions: set[TrackedProtocol] = set()
        self.command_observers: list[CommandObserver] = []
        self.connection_observers: list[Callable[[str, int], None]] = []
        self._drained: defer.Deferred | None = None

    def wrap(self, kind: str, factory: IProtocolFactory) -> IProtocolFactory:
        return TrackingFactory(factory, kind, self)

    def observe(self, kind: str, verb: str, start: float) -> None:
        elapsed = time.monotonic() - start
        for observer in self.command_observers:
            observer(kind, verb, elapsed)

    def connected(self, kind: str) -> None:
        for observer in self.connection_observers:
            observer(kind, +1)

    def disconnected(self, kind: str, session: TrackedProtocol) -> None:
        for observer in self.connection_observers:
            observer(kind, -1)
        if self._drained is not None and not self.sessions and not self._drained.called:
            self._drained.callback(None)

    def drain(self, grace: float) -> defer.Deferred:
        """Say goodbye to idle sessions now and to busy ones when their work is done;
        abort whatever is still open after ``grace`` seconds. Fires when all are gone."""
        self._drained = defer.Deferred()
        for session in list(self.sessions):
            session.draining = True
            if not session.busy:
                session.goodbye()
        if not self.sessions:
            self._drained.callback(None)
            return self._drained

        def abort() -> None:
            for session in list(self.sessions):
                if session.transport is not None:
                    session.transport.abortConnection()
            if self._drained is not None and not self._drained.called:
                self._drained.callback(None)

        timer = self.reactor.callLater(grace, abort)
        self._drained.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return self._drained
