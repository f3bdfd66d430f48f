"""Hypothesis: faults see commands only, however the byte stream is split.

Faults are applied by the protocols themselves (their dispatch hook, see
mailhost.sessions), so a DATA body or an IMAP literal can never be taken for a
command. Unit-level on purpose (the real SMTP and IMAP servers on an in-memory
transport and a fake clock, no sockets), so that hypothesis can try many packet
splits quickly; the socket tests cover real clients.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from mailhost.auth.directory import UserDirectory
from mailhost.config import Config
from mailhost.imap.factory import IMAPFactory
from mailhost.sessions import IDispatchHook, SessionRegistry
from mailhost.settings import IMAPSettings, RelaySettings, SMTPSettings
from mailhost.smtp.factory import SMTPFactory
from mailhost.smtp.policy import RecipientPolicy
from mailhost.store.memory import MemoryStore
from mailhost.testing.faults import Fault, FaultHook, FaultSet
from tests.logins import login_service

PEER = IPv4Address("TCP", "127.0.0.1", 1)


@implementer(IDispatchHook)
class Recorder:
    """The fault hook, plus a record of every command line it was asked about."""

    def __init__(self, faults: list[Fault], clock: task.Clock) -> None:
        self.hook = FaultHook(faults, clock)
        self.lines: list[str] = []

    def dispatch(self, session, verb, line):
        self.lines.append(line)
        return self.hook.dispatch(session, verb, line)


def _host():
    config = Config()
    config.server.domains = ["example.test"]
    store = MemoryStore()
    directory = UserDirectory.in_memory(
        domains=["example.test"], aliases={},
        users={"alice@example.test": "secret", "bob@example.test": "secret"})
    return config, store, directory, login_service(directory, store)


def _smtp_factory(config, store, directory, login, **kw):
    """An SMTP factory as makeService builds one: settings and recipient policy given."""
    relay = RelaySettings.from_config(config)
    policy = RecipientPolicy(directory, relay.relay_networks, can_queue=False,
                             default_domain=relay.default_domain)
    return SMTPFactory(SMTPSettings.from_config(config), store, directory, login, policy, **kw)


def _connect(factory):
    proto = factory.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    proto.makeConnection(transport)
    return proto, transport


def _feed(proto, clock: task.Clock, stream: bytes, cuts: list[int]) -> None:
    last = 0
    for cut in sorted(set(c % (len(stream) + 1) for c in cuts)) + [len(stream)]:
        if cut > last:
            proto.dataReceived(stream[last:cut])
            clock.advance(0)
            last = cut


body_line = st.sampled_from([b"RCPT TO:<bob@example.test>", b"DATA", b"..", b"...x",
                             b"MAIL FROM:<a@b.test>", b"hello", b"", b"QUIT"])


@settings(max_examples=150, deadline=None)
@given(st.lists(body_line, max_size=8), st.lists(st.integers(0, 10_000), max_size=12))
def test_smtp_body_never_read_as_commands(body, cuts):
    faults: list[Fault] = []
    FaultSet("smtp", faults).fail("RCPT", code=451, message="no", match="bob@", times=None)
    clock = task.Clock()
    config, store, directory, login = _host()
    hook = Recorder(faults, clock)
    factory = _smtp_factory(config, store, directory, login, reactor=clock,
                          sessions=SessionRegistry(clock, hook=hook))
    proto, transport = _connect(factory)
    client = (b"EHLO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\n"
              b"RCPT TO:<bob@example.test>\r\n")
    message = b"".join(line + b"\r\n" for line in body)
    # Like a conforming client, send DATA's body only after the 354 (same for the rest).
    _feed(proto, clock, client + b"DATA\r\n", cuts)
    _feed(proto, clock, message + b".\r\nNOOP\r\n", cuts)
    assert hook.lines == ["", "EHLO x", "MAIL FROM:<a@b.test>", "RCPT TO:<alice@example.test>",
                          "RCPT TO:<bob@example.test>", "DATA", "NOOP"]
    codes = [line[:4] for line in transport.value().split(b"\r\n") if line[3:4] == b" "]
    assert codes == [b"220 ", b"250 ", b"250 ", b"250 ", b"451 ", b"354 ", b"250 ", b"250 "]
    assert faults[0].hits == 1


literal_body = st.binary(max_size=40).map(lambda b: b + b"\r\nz1 SELECT INBOX\r\n")


@settings(max_examples=150, deadline=None)
@given(literal_body, st.booleans(), st.lists(st.integers(0, 10_000), max_size=12))
def test_imap_literals_never_read_as_commands(body, plus, cuts):
    faults: list[Fault] = []
    FaultSet("imap", faults).fail("SELECT", message="nope", times=None)
    clock = task.Clock()
    config, store, _directory, login = _host()
    hook = Recorder(faults, clock)
    factory = IMAPFactory(IMAPSettings.from_config(config), login, reactor=clock,
                          sessions=SessionRegistry(clock, hook=hook))
    proto, transport = _connect(factory)
    _feed(proto, clock, b"a0 LOGIN alice@example.test secret\r\n", [])
    marker = b"+" if plus else b""
    first = b"a1 APPEND INBOX {%d%s}\r\n" % (len(body), marker)
    _feed(proto, clock, first, cuts)
    if not plus:
        assert transport.value().endswith(b"+ Ready for literal data\r\n")
    _feed(proto, clock, body + b"\r\na2 SELECT INBOX\r\na3 NOOP\r\n", cuts)
    # NUL in a plain literal is refused (RFC 3516: binary data goes in a literal8) when the
    # command is parsed; the hook saw its line already if the server asked it before
    # sending '+' (a synchronizing literal). Either way the literal's lines are never commands.
    nul = b"\x00" in body
    appended = [] if nul and plus else [first[:-2].decode()]
    assert hook.lines == ["", "a0 LOGIN alice@example.test secret", *appended,
                          "a2 SELECT INBOX", "a3 NOOP"]
    out = transport.value()
    assert (b"a1 BAD NUL in a literal" if nul else b"a1 OK") in out
    assert out.endswith(b"a2 NO nope\r\na3 OK NOOP completed\r\n")
    assert faults[0].hits == 1
