"""Hypothesis: the fault wrapper's SMTP/IMAP framing survives any split of the byte stream.

Unit-level on purpose (a recording fake server behind the wrapper, no sockets), so that
hypothesis can try many packet splits quickly; the socket tests cover real clients.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.testing import StringTransport

from mailhost.testing.faults import Fault, FaultFactory, FaultSet


class FakeSMTP(Protocol):
    """Replies 250 per line, 354 to DATA, 250 after a body; records what it got."""

    def __init__(self) -> None:
        self.got = b""
        self.buf = b""
        self.in_data = False

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(b"220 fake\r\n")

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.got += data
        self.buf += data
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.buf = self.buf[end + 5:]
                self.in_data = False
                self.transport.write(b"250 stored\r\n")
                continue
            if b"\r\n" not in self.buf:
                return
            line, self.buf = self.buf.split(b"\r\n", 1)
            if line.upper() == b"DATA":
                self.in_data = True
                self.buf = b"\r\n" + self.buf  # the terminator may follow at once
                self.transport.write(b"354 go\r\n")
            else:
                self.transport.write(b"250 ok\r\n")


class FakeIMAP(Protocol):
    """Completes each tagged command with OK, handling {n} and {n+} literals."""

    literal = re.compile(rb"\{(\d+)(\+?)\}$")

    def __init__(self) -> None:
        self.got = b""
        self.buf = b""
        self.need = 0
        self.tag: bytes | None = None

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(b"* OK fake\r\n")

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.got += data
        self.buf += data
        while True:
            if self.need:
                if len(self.buf) < self.need:
                    return
                self.buf, self.need = self.buf[self.need:], 0
                continue
            if b"\r\n" not in self.buf:
                return
            line, self.buf = self.buf.split(b"\r\n", 1)
            if self.tag is None:
                self.tag = line.split(b" ", 1)[0]
            m = self.literal.search(line)
            if m:
                self.need = int(m.group(1))
                if not m.group(2):
                    self.transport.write(b"+ go\r\n")
                continue
            self.transport.write(self.tag + b" OK done\r\n")
            self.tag = None


def _connect(kind: str, proto_cls: type, registry: list[Fault]):
    factory = ServerFactory.forProtocol(proto_cls)
    wrapper = FaultFactory(kind, factory, registry, task.Clock())
    proto = wrapper.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def _feed(proto, stream: bytes, cuts: list[int]) -> None:
    last = 0
    for cut in sorted(set(c % (len(stream) + 1) for c in cuts)) + [len(stream)]:
        if cut > last:
            proto.dataReceived(stream[last:cut])
            last = cut


body_line = st.sampled_from([b"RCPT TO:<bob@example.test>", b"DATA", b"..", b"...x",
                             b"MAIL FROM:<a@b>", b"hello", b"", b"QUIT"])


@settings(max_examples=150, deadline=None)
@given(st.lists(body_line, max_size=8), st.lists(st.integers(0, 10_000), max_size=12))
def test_smtp_body_never_read_as_commands(body, cuts):
    registry: list[Fault] = []
    FaultSet("smtp", registry).fail("RCPT", code=451, message="no", match="bob@", times=None)
    proto, transport = _connect("smtp", FakeSMTP, registry)
    client = (b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.test>\r\n"
              b"RCPT TO:<bob@example.test>\r\n")
    message = b"".join(line + b"\r\n" for line in body)
    # Like a conforming client, send DATA's body only after the 354 (same for the rest).
    _feed(proto, client + b"DATA\r\n", cuts)
    _feed(proto, message + b".\r\nNOOP\r\n", cuts)
    server = proto.wrappedProtocol
    expected = (b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
                + message + b".\r\nNOOP\r\n")
    assert server.got == expected
    codes = [line[:3] for line in transport.value().split(b"\r\n") if line]
    assert codes == [b"220", b"250", b"250", b"250", b"451", b"354", b"250", b"250"]
    assert registry[0].hits == 1


literal_body = st.binary(max_size=40).map(lambda b: b + b"\r\nz1 SELECT INBOX\r\n")


@settings(max_examples=150, deadline=None)
@given(literal_body, st.booleans(), st.lists(st.integers(0, 10_000), max_size=12))
def test_imap_literals_never_read_as_commands(body, plus, cuts):
    registry: list[Fault] = []
    FaultSet("imap", registry).fail("SELECT", message="nope", times=None)
    proto, transport = _connect("imap", FakeIMAP, registry)
    marker = b"+" if plus else b""
    first = b"a1 APPEND INBOX {%d%s}\r\n" % (len(body), marker)
    _feed(proto, first, cuts)
    if not plus:
        assert transport.value().endswith(b"+ go\r\n")
    _feed(proto, body + b"\r\na2 SELECT INBOX\r\na3 NOOP\r\n", cuts)
    server = proto.wrappedProtocol
    assert server.got == first + body + b"\r\na3 NOOP\r\n"
    out = transport.value()
    assert out.endswith(b"a1 OK done\r\na2 NO nope\r\na3 OK done\r\n")
    assert registry[0].hits == 1
