"""The Sendmail milter protocol, version 6, on the wire: packets and their codec.

Every packet is a 4-octet big-endian length, then a command octet, then
``length - 1`` octets of data (libmilter's ``mfdef.h``; the protocol as Postfix's
``milter8.c`` speaks it). This module holds the constants, pure functions that
encode and decode each command and each reply (so the client and the test's
scripted milter share one codec, and hypothesis can fuzz it), and
``MilterProtocol``, the Twisted protocol that frames packets and hands replies to
whoever waits for the next one.

Anything malformed raises ``MilterProtocolError``: the client then treats the
milter as failed and applies its ``default_action``; nothing here crashes on bad
input.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

VERSION = 6
#: The largest body chunk a milter accepts (libmilter's MILTER_CHUNK_SIZE).
CHUNK_SIZE = 65535
#: The largest packet we accept from a milter (libmilter allows up to 1 MiB with
#: MILTER_MAX_DATA_SIZE raised; a bigger length is garbage, not data).
MAX_PACKET = 1024 * 1024

# Commands (MTA → milter).
C_ABORT, C_BODY, C_CONNECT, C_MACRO = b"A", b"B", b"C", b"D"
C_BODYEOB, C_HELO, C_QUIT_NC, C_HEADER = b"E", b"H", b"K", b"L"
C_MAIL, C_EOH, C_OPTNEG, C_QUIT = b"M", b"N", b"O", b"Q"
C_RCPT, C_DATA, C_UNKNOWN = b"R", b"T", b"U"
COMMANDS = frozenset(bytes([c]) for c in b"ABCDEHKLMNOQRTU")

# Replies (milter → MTA).
R_ADDRCPT, R_DELRCPT, R_ADDRCPT_PAR, R_SHUTDOWN = b"+", b"-", b"2", b"4"
R_ACCEPT, R_REPLBODY, R_CONTINUE, R_DISCARD = b"a", b"b", b"c", b"d"
R_CHGFROM, R_CONN_FAIL, R_ADDHEADER, R_INSHEADER = b"e", b"f", b"h", b"i"
R_SETSYMLIST, R_CHGHEADER, R_PROGRESS, R_QUARANTINE = b"l", b"m", b"p", b"q"
R_REJECT, R_SKIP, R_TEMPFAIL, R_REPLYCODE = b"r", b"s", b"t", b"y"
R_OPTNEG = b"O"
REPLIES = frozenset(bytes([c]) for c in b"+-24abcdefhilmpqrstyO")

# Actions a milter may ask for (SMFIF_*).
F_ADDHDRS, F_CHGBODY, F_ADDRCPT, F_DELRCPT = 0x01, 0x02, 0x04, 0x08
F_CHGHDRS, F_QUARANTINE, F_CHGFROM, F_ADDRCPT_PAR = 0x10, 0x20, 0x40, 0x80
F_SETSYMLIST = 0x100

# Protocol steps a milter may switch off or not answer (SMFIP_*).
P_NOCONNECT, P_NOHELO, P_NOMAIL, P_NORCPT = 0x1, 0x2, 0x4, 0x8
P_NOBODY, P_NOHDRS, P_NOEOH, P_NR_HDR = 0x10, 0x20, 0x40, 0x80
P_NOUNKNOWN, P_NODATA, P_SKIP, P_RCPT_REJ = 0x100, 0x200, 0x400, 0x800
P_NR_CONN, P_NR_HELO, P_NR_MAIL, P_NR_RCPT = 0x1000, 0x2000, 0x4000, 0x8000
P_NR_DATA, P_NR_UNKN, P_NR_EOH, P_NR_BODY = 0x10000, 0x20000, 0x40000, 0x80000
P_HDR_LEADSPC = 0x100000

# Macro stages of the SMFIR_OPTNEG reply and SMFIR_SETSYMLIST (SMFIM_*).
M_CONNECT, M_HELO, M_ENVFROM, M_ENVRCPT, M_DATA, M_EOM, M_EOH = range(7)


class MilterProtocolError(Exception):
    """A packet that breaks the protocol (bad length, unknown command, bad data)."""


def encode_packet(command: bytes, data: bytes = b"") -> bytes:
    """One packet: length (command octet included), command, data."""
    if len(command) != 1:
        raise ValueError("a command is one octet")
    return struct.pack("!I", len(data) + 1) + command + data


class PacketDecoder:
    """Splits a byte stream into (command, data) packets; bounded by ``max_packet``."""

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self.max_packet = max_packet
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buf += data
        packets = []
        while len(self._buf) >= 4:
            (length,) = struct.unpack_from("!I", self._buf)
            if length == 0:
                raise MilterProtocolError("packet of length 0 (no command)")
            if length > self.max_packet:
                raise MilterProtocolError(f"packet of {length} octets is over the limit")
            if len(self._buf) < 4 + length:
                break
            packet = bytes(self._buf[4:4 + length])
            del self._buf[:4 + length]
            packets.append((packet[:1], packet[1:]))
        return packets


def _strings(data: bytes, count: int | None = None, what: str = "data") -> list[bytes]:
    """NUL-terminated strings; ``count``: exactly that many."""
    if not data.endswith(b"\0"):
        raise MilterProtocolError(f"{what}: not NUL-terminated")
    parts = data[:-1].split(b"\0")
    if count is not None and len(parts) != count:
        raise MilterProtocolError(f"{what}: {len(parts)} strings, expected {count}")
    return parts


def _nul(*values: bytes) -> bytes:
    for v in values:
        if b"\0" in v:
            raise ValueError("a milter string cannot hold NUL")
    return b"".join(v + b"\0" for v in values)


# -- options negotiation ------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """SMFIC_OPTNEG and its reply: version, action and protocol flags; the reply may
    name the macros the milter wants per stage (``{stage: b"{a} {b}"}``)."""

    version: int = VERSION
    actions: int = 0
    protocol: int = 0
    macros: tuple[tuple[int, bytes], ...] = ()


def encode_options(options: Options) -> bytes:
    data = struct.pack("!III", options.version, options.actions, options.protocol)
    for stage, names in options.macros:
        data += struct.pack("!I", stage) + _nul(names)
    return data


def decode_options(data: bytes) -> Options:
    if len(data) < 12:
        raise MilterProtocolError(f"OPTNEG of {len(data)} octets")
    version, actions, proto = struct.unpack_from("!III", data)
    rest = data[12:]
    macros = []
    while rest:
        if len(rest) < 5:
            raise MilterProtocolError("OPTNEG: truncated macro list")
        (stage,) = struct.unpack_from("!I", rest)
        end = rest.find(b"\0", 4)
        if end < 0:
            raise MilterProtocolError("OPTNEG: macro list not NUL-terminated")
        macros.append((stage, rest[4:end]))
        rest = rest[end + 1:]
    return Options(version, actions, proto, tuple(macros))


# -- commands -----------------------------------------------------------------


def encode_macros(command: bytes, macros: Sequence[tuple[bytes, bytes]]) -> bytes:
    """SMFIC_MACRO data: the command the macros are for, then name/value pairs."""
    return command + b"".join(_nul(name, value) for name, value in macros)


def decode_macros(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    if not data:
        raise MilterProtocolError("MACRO without a command")
    if len(data) == 1:
        return data[:1], []
    parts = _strings(data[1:], what="MACRO")
    if len(parts) % 2:
        raise MilterProtocolError("MACRO: a name without a value")
    return data[:1], list(zip(parts[::2], parts[1::2], strict=True))


@dataclass(frozen=True)
class Connect:
    """SMFIC_CONNECT: the client's name, family (``4``, ``6``, ``U``, ``L`` unknown),
    port and address."""

    hostname: bytes
    family: bytes = b"4"
    port: int = 0
    address: bytes = b""


def encode_connect(c: Connect) -> bytes:
    if c.family == b"L":
        return _nul(c.hostname) + b"L"
    return _nul(c.hostname) + c.family + struct.pack("!H", c.port) + _nul(c.address)


def decode_connect(data: bytes) -> Connect:
    end = data.find(b"\0")
    if end < 0 or end + 1 >= len(data):
        raise MilterProtocolError("CONNECT: no family")
    hostname, family, rest = data[:end], data[end + 1:end + 2], data[end + 2:]
    if family == b"L":
        return Connect(hostname, family)
    if family not in (b"4", b"6", b"U") or len(rest) < 3:
        raise MilterProtocolError("CONNECT: bad family or address")
    (port,) = struct.unpack_from("!H", rest)
    (address,) = _strings(rest[2:], 1, "CONNECT")
    return Connect(hostname, family, port, address)


def encode_args(*args: bytes) -> bytes:
    """HELO, MAIL, RCPT, UNKNOWN: NUL-terminated strings."""
    return _nul(*args)


def decode_args(data: bytes) -> list[bytes]:
    return _strings(data, what="arguments")


def encode_header(name: bytes, value: bytes) -> bytes:
    return _nul(name, value)


def decode_header(data: bytes) -> tuple[bytes, bytes]:
    name, value = _strings(data, 2, "HEADER")
    return name, value


# -- replies ------------------------------------------------------------------


@dataclass(frozen=True)
class HeaderChange:
    """SMFIR_ADDHEADER (index unused), SMFIR_INSHEADER and SMFIR_CHGHEADER (the
    ``index``-th field of that name, from 1; an empty value deletes it)."""

    name: bytes
    value: bytes
    index: int = 0


def decode_reply(command: bytes, data: bytes) -> Any:
    """The meaning of one reply packet: None (no data), an ``Options``, a
    ``HeaderChange``, a reply text (SMFIR_REPLYCODE: ``(code, text)``), a list of
    strings (recipients, quarantine reason), or bytes (a body chunk)."""
    if command not in REPLIES:
        raise MilterProtocolError(f"unknown reply {command!r}")
    if command == R_OPTNEG:
        return decode_options(data)
    if command in (R_ACCEPT, R_CONTINUE, R_DISCARD, R_REJECT, R_TEMPFAIL, R_SKIP,
                   R_PROGRESS, R_SHUTDOWN, R_CONN_FAIL):
        return None
    if command == R_REPLBODY:
        return data
    if command == R_ADDHEADER:
        name, value = _strings(data, 2, "ADDHEADER")
        return HeaderChange(name, value)
    if command in (R_INSHEADER, R_CHGHEADER):
        if len(data) < 4:
            raise MilterProtocolError("header change without an index")
        (index,) = struct.unpack_from("!I", data)
        name, value = _strings(data[4:], 2, "CHGHEADER")
        return HeaderChange(name, value, index)
    if command == R_REPLYCODE:
        (text,) = _strings(data, 1, "REPLYCODE")
        return parse_reply_text(text)
    if command == R_SETSYMLIST:
        if len(data) < 5:
            raise MilterProtocolError("SETSYMLIST too short")
        (stage,) = struct.unpack_from("!I", data)
        (names,) = _strings(data[4:], 1, "SETSYMLIST")
        return (stage, names)
    return _strings(data, what="reply")  # + - 2 e q


def encode_reply(command: bytes, value: Any = None) -> bytes:
    """The data of a reply packet (the inverse of ``decode_reply``), for test milters."""
    if command == R_OPTNEG:
        return encode_options(value)
    if value is None:
        return b""
    if command == R_REPLBODY:
        return bytes(value)
    if command == R_ADDHEADER:
        return _nul(value.name, value.value)
    if command in (R_INSHEADER, R_CHGHEADER):
        return struct.pack("!I", value.index) + _nul(value.name, value.value)
    if command == R_REPLYCODE:
        code, status, text = value
        return _nul(f"{code} {status} {text}".encode() if status else f"{code} {text}".encode())
    if command == R_SETSYMLIST:
        return struct.pack("!I", value[0]) + _nul(value[1])
    return _nul(*value)


def parse_reply_text(raw: bytes) -> tuple[int, str, str]:
    """``554 5.7.1 text`` (or a multi-line ``554-5.7.1 a\\r\\n554 5.7.1 b``) →
    (code, enhanced status or "", text with lines joined by a space)."""
    lines = raw.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    code, status, texts = 0, "", []
    for line in lines:
        if len(line) < 3 or not line[:3].isdigit() or line[0] not in "45" or (
                len(line) > 3 and line[3] not in " -"):
            raise MilterProtocolError(f"REPLYCODE: not an SMTP reply: {line[:40]!r}")
        this = int(line[:3])
        if code and this != code:
            raise MilterProtocolError("REPLYCODE: lines with different codes")
        code = this
        rest = line[4:]
        word, _, tail = rest.partition(" ")
        if _is_status(word, code):
            status = status or word
            rest = tail
        texts.append(rest.strip())
    return code, status, " ".join(t for t in texts if t)


def _is_status(word: str, code: int) -> bool:
    parts = word.split(".")
    return (len(parts) == 3 and all(p.isdigit() and 0 < len(p) <= 3 for p in parts)
            and parts[0] == str(code)[0])


# -- the Twisted protocol -----------------------------------------------------


@implementer(IPushProducer)
class MilterProtocol(protocol.Protocol):
    """Frames packets both ways; ``next_reply`` gives the milter's packets in order.

    A framing error or a lost connection fails every waiter (and every later call)
    with the reason, so the conversation above ends in its default action.

    It is its own transport's producer, so ``writable()`` can hold back a body the
    milter does not acknowledge chunk by chunk (``SMFIP_NR_BODY``) while the socket's
    buffer is full: the body then waits in the spool, not in memory."""

    def __init__(self) -> None:
        self._decoder = PacketDecoder()
        self._replies: deque[tuple[bytes, bytes]] = deque()
        self._waiting: deque[defer.Deferred[tuple[bytes, bytes]]] = deque()
        self._error: Failure | None = None
        self.connected_d: defer.Deferred[MilterProtocol] = defer.Deferred()
        self._paused = False
        self._writable: list[defer.Deferred[None]] = []

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        d, self.connected_d = self.connected_d, defer.Deferred()
        d.callback(self)

    def pauseProducing(self) -> None:  # noqa: N802
        self._paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self._paused = False
        waiting, self._writable = self._writable, []
        for d in waiting:
            d.callback(None)

    def stopProducing(self) -> None:  # noqa: N802
        self.resumeProducing()

    def writable(self) -> defer.Deferred[None]:
        """Fires once the transport takes more data (at once unless it is full)."""
        if not self._paused or self._error is not None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._writable.append(d)
        return d

    @property
    def usable(self) -> bool:
        """Still connected, with nothing unread: fit for the next message."""
        return self._error is None and not self._replies and self.transport is not None

    def send(self, command: bytes, data: bytes = b"") -> None:
        if self._error is not None:
            return
        self.transport.write(encode_packet(command, data))  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._error is not None:
            return
        try:
            packets = self._decoder.feed(data)
        except MilterProtocolError:
            self._fail(Failure())
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        for packet in packets:
            if self._waiting:
                self._waiting.popleft().callback(packet)
            else:
                self._replies.append(packet)

    def next_reply(self) -> defer.Deferred[tuple[bytes, bytes]]:
        """The next packet from the milter (cancellable, for the timeout)."""
        if self._replies:
            return defer.succeed(self._replies.popleft())
        if self._error is not None:
            return defer.fail(self._error)

        def cancel(d: defer.Deferred[Any]) -> None:
            if d in self._waiting:
                self._waiting.remove(d)

        d: defer.Deferred[tuple[bytes, bytes]] = defer.Deferred(cancel)
        self._waiting.append(d)
        return d

    def _fail(self, reason: Failure) -> None:
        if self._error is None:
            self._error = reason
        while self._waiting:
            self._waiting.popleft().errback(self._error)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        self._fail(reason)
        self.resumeProducing()


__all__ = [
    "CHUNK_SIZE", "COMMANDS", "Connect", "HeaderChange", "MAX_PACKET", "MilterProtocol",
    "MilterProtocolError", "Options", "PacketDecoder", "REPLIES", "VERSION", "decode_args",
    "decode_connect", "decode_header", "decode_macros", "decode_options", "decode_reply",
    "encode_args", "encode_connect", "encode_header", "encode_macros", "encode_options",
    "encode_packet", "encode_reply", "parse_reply_text",
]
