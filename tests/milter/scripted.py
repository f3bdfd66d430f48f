"""A scripted milter for the tests: a Twisted server speaking the milter protocol
through our codec, recording every command and answering as the test says."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint

from mailhost.milter import protocol as p

Reply = tuple[bytes, Any]
#: command → replies to send (a list), or a callable (milter, data) → replies.
Script = dict[bytes, Any]


class ScriptedMilterProtocol(protocol.Protocol):
    def connectionMade(self) -> None:  # noqa: N802
        self.decoder = p.PacketDecoder()
        self.seen: list[tuple[bytes, bytes]] = []
        self.factory.sessions.append(self.seen)
        self.factory.last_protocol = self

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        for command, payload in self.decoder.feed(data):
            self.seen.append((command, payload))
            self.factory.commands.append((command, payload))
            replies = self.factory.answer(command, payload)
            delay = self.factory.delays.get(command, 0.0)
            if delay:
                reactor.callLater(delay, self.send_all, replies)
            else:
                self.send_all(replies)

    def send_all(self, replies: list[Reply]) -> None:
        for reply, value in replies:
            if reply == b"raw":
                self.transport.write(value)
            elif reply == b"close":
                self.transport.loseConnection()
            else:
                self.transport.write(p.encode_packet(reply, p.encode_reply(reply, value)))


class ScriptedMilter(protocol.Factory):
    """``script`` maps a command octet to its replies; commands not in it get
    SMFIR_CONTINUE (OPTNEG gets ``options``; MACRO and QUIT get nothing)."""

    protocol = ScriptedMilterProtocol

    def __init__(self, script: Script | None = None, options: p.Options | None = None,
                 delays: dict[bytes, float] | None = None) -> None:
        self.script = dict(script or {})
        self.options = options or p.Options(6, p.F_ADDHDRS | p.F_CHGHDRS | p.F_QUARANTINE, 0)
        self.delays = dict(delays or {})
        self.commands: list[tuple[bytes, bytes]] = []
        self.sessions: list[list[tuple[bytes, bytes]]] = []
        self.port = 0
        self.last_protocol: ScriptedMilterProtocol | None = None
        self._listener: Any = None

    def answer(self, command: bytes, payload: bytes) -> list[Reply]:
        if command in self.script:
            entry = self.script[command]
            return entry(self, payload) if callable(entry) else list(entry)
        if command == p.C_OPTNEG:
            return [(p.R_OPTNEG, self.options)]
        if command in (p.C_MACRO, p.C_QUIT, p.C_ABORT, p.C_QUIT_NC):
            return []
        if command == p.C_BODY and self.options.protocol & p.P_NR_BODY:
            return []
        if command == p.C_HEADER and self.options.protocol & p.P_NR_HDR:
            return []
        return [(p.R_CONTINUE, None)]

    def named(self, command: bytes) -> list[bytes]:
        return [data for c, data in self.commands if c == command]

    def macros(self) -> dict[bytes, dict[bytes, bytes]]:
        """The macros sent, by the command they were for."""
        out: dict[bytes, dict[bytes, bytes]] = {}
        for data in self.named(p.C_MACRO):
            command, pairs = p.decode_macros(data)
            out.setdefault(command, {}).update(pairs)
        return out

    async def start(self) -> ScriptedMilter:
        self._listener = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self)
        self.port = self._listener.getHost().port
        return self

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stopListening()


def start(script: Script | None = None, **kw: Any) -> defer.Deferred[ScriptedMilter]:
    return defer.Deferred.fromCoroutine(ScriptedMilter(script, **kw).start())


Callback = Callable[[ScriptedMilter, bytes], list[Reply]]
