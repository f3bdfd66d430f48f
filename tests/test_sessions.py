"""ISession on every protocol, the events sessions report, and the per-host drain.

The real SMTP, POP3 and IMAP servers on an in-memory transport and a fake clock.
"""

from __future__ import annotations

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailhost.auth.directory import UserDirectory
from mailhost.config import Config
from mailhost.imap.factory import IMAPFactory
from mailhost.pop3.factory import POP3Factory
from mailhost.sessions import IDispatchHook, ISession, ISessionObserver, SessionRegistry
from mailhost.settings import IMAPSettings, POP3Settings, SMTPSettings
from mailhost.smtp.factory import SMTPFactory
from mailhost.smtp.policy import RecipientPolicy
from mailhost.store.memory import MemoryStore
from mailhost.testing.faults import FaultHook
from tests.logins import login_service

PEER = IPv4Address("TCP", "127.0.0.1", 1)


@implementer(ISessionObserver)
class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def session_opened(self, session):
        self.events.append(("opened", session.protocol))

    def session_closed(self, session):
        self.events.append(("closed", session.protocol))

    def command_started(self, session, verb):
        self.events.append(("started", verb))

    def command_finished(self, session, verb, status, octets):
        self.events.append(("finished", verb, status, octets))


class Host:
    """One registry, and a way to open sessions of each protocol on it."""

    def __init__(self) -> None:
        self.clock = task.Clock()
        self.registry = SessionRegistry(self.clock)
        self.recorder = Recorder()
        self.registry.observers.append(self.recorder)
        self.config = Config()
        self.config.server.domains = ["example.test"]
        self.store = MemoryStore()
        self.directory = UserDirectory.in_memory(
            domains=["example.test"], users={"alice@example.test": "secret"}, aliases={})
        self.login = login_service(self.directory, self.store)

    def factory(self, kind: str):
        if kind in ("smtp", "submission"):
            policy = RecipientPolicy(self.directory, (), can_queue=False,
                                     default_domain="example.test")
            return SMTPFactory(SMTPSettings.from_config(self.config), self.store,
                               self.directory, self.login, policy,
                               submission=kind == "submission", reactor=self.clock,
                               sessions=self.registry)
        if kind == "pop3":
            return POP3Factory(POP3Settings.from_config(self.config), self.login,
                               reactor=self.clock,
                               sessions=self.registry)
        return IMAPFactory(IMAPSettings.from_config(self.config), self.login, reactor=self.clock,
                           sessions=self.registry)

    def connect(self, kind: str):
        proto = self.factory(kind).buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        return proto, transport

    def send(self, proto, data: bytes) -> None:
        proto.dataReceived(data)
        self.clock.advance(0)

    def lose(self, proto, transport) -> None:
        """Deliver the close a StringTransport only records."""
        if transport.disconnecting and proto.transport is not None:
            proto.connectionLost(None)


@pytest.fixture
def host():
    return Host()


@pytest.mark.parametrize("kind", ["smtp", "submission", "pop3", "imap"])
def test_every_protocol_provides_isession(host, kind):
    proto, _ = host.connect(kind)
    assert verifyObject(ISession, proto)
    assert proto.protocol == kind
    assert proto in host.registry.sessions
    assert not proto.busy


def test_observers_and_hooks_provide_their_interfaces():
    from mailhost.metrics import Metrics

    assert verifyObject(ISessionObserver, Metrics())
    assert verifyObject(IDispatchHook, FaultHook([], task.Clock()))


def test_smtp_reports_each_command_with_its_reply(host):
    proto, transport = host.connect("smtp")
    host.send(proto, b"EHLO c\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
                     b"DATA\r\n")
    assert proto.busy  # a transaction is under way
    host.send(proto, b"Subject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    host.lose(proto, transport)
    events = host.recorder.events
    assert events[0] == ("opened", "smtp")
    assert events[-1] == ("closed", "smtp")
    finished = [e[1:3] for e in events if e[0] == "finished"]
    assert finished == [("EHLO", "250"), ("MAIL", "250"), ("RCPT", "250"), ("DATA", "354"),
                        ("DATA-END", "250"), ("QUIT", "221")]
    [octets] = [e[3] for e in events if e[:2] == ("finished", "DATA-END")]
    assert octets == len(b"Subject: s\r\n\r\nbody\r\n")  # the octets the client sent
    assert proto not in host.registry.sessions


def test_pop3_and_imap_report_their_status(host):
    pop, _ = host.connect("pop3")
    host.send(pop, b"USER alice@example.test\r\nPASS wrong\r\nNOOP\r\n")
    imap, _ = host.connect("imap")
    host.send(imap, b"a1 LOGIN alice@example.test secret\r\na2 NOOP\r\na3 FROB\r\n")
    finished = [e[1:3] for e in host.recorder.events if e[0] == "finished"]
    # (an unknown or misplaced command is the protocol's own BAD/-ERR: no event)
    assert finished == [("USER", "+OK"), ("PASS", "-ERR"), ("LOGIN", "OK"), ("NOOP", "OK")]


def test_drain_says_goodbye_to_idle_sessions_and_waits_for_a_transaction(host):
    idle_smtp, idle_t = host.connect("smtp")
    busy_smtp, busy_t = host.connect("smtp")
    imap, imap_t = host.connect("imap")
    pop, pop_t = host.connect("pop3")
    host.send(pop, b"USER alice@example.test\r\n")
    host.send(busy_smtp, b"EHLO c\r\nMAIL FROM:<x@remote.test>\r\n"
                         b"RCPT TO:<alice@example.test>\r\nDATA\r\nSubject: s\r\n\r\n")
    d = host.registry.drain(10.0)
    assert idle_t.value().endswith(b"421 4.3.2 localhost Server shutting down\r\n")
    assert imap_t.value().endswith(b"* BYE Server shutting down\r\n")
    assert pop_t.value().endswith(b"+OK Send PASS\r\n")  # no word, no UPDATE
    assert pop_t.disconnecting and idle_t.disconnecting and imap_t.disconnecting
    for proto, transport in ((idle_smtp, idle_t), (imap, imap_t), (pop, pop_t)):
        host.lose(proto, transport)
    assert not busy_t.disconnecting and not d.called
    # The transaction finishes: its 250, then the goodbye.
    host.send(busy_smtp, b"body\r\n.\r\n")
    last_two = busy_t.value().split(b"\r\n")[-3:-1]
    assert last_two[0].startswith(b"250 2.0.0 Ok: queued as ")
    assert last_two[1] == b"421 4.3.2 localhost Server shutting down"
    host.lose(busy_smtp, busy_t)
    assert d.called


def test_drain_aborts_what_is_left_after_the_grace(host):
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        proto, transport = host.connect("smtp")
        host.send(proto, b"EHLO c\r\nMAIL FROM:<x@remote.test>\r\n")
        d = host.registry.drain(5.0)
        host.clock.advance(4.9)
        assert not d.called and not transport.disconnecting
        host.clock.advance(0.2)
        assert d.called
    finally:
        globalLogPublisher.removeObserver(events.append)
    # Cut, and said so: how many, after how long, which protocols.
    (cut,) = [e for e in events if e.get("event") == "drain_timeout"]
    assert cut["count"] == 1 and cut["grace"] == 5.0 and cut["kinds"] == "smtp"


def test_metrics_count_each_smtp_transaction_once(host):
    from mailhost.metrics import Metrics

    metrics = Metrics()
    host.registry.observers.append(metrics)
    proto, transport = host.connect("smtp")
    host.send(proto, b"EHLO c\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
                     b"DATA\r\nSubject: s\r\n\r\nbody\r\n.\r\n")
    host.send(proto, b"MAIL FROM:<x@remote.test>\r\nRSET\r\n")
    host.send(proto, b"MAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
                     b"BDAT 3\r\nabcBDAT 2 LAST\r\nde")
    host.send(proto, b"MAIL FROM:<x@remote.test>\r\n")
    proto.connectionLost(None)

    def messages(result, code):
        return metrics.registry.get_sample_value(
            "mailhost_smtp_messages_total", {"protocol": "smtp", "result": result, "code": code})

    assert messages("accepted", "250") == 2  # DATA and BDAT
    assert messages("aborted", "none") == 2  # RSET, and the disconnect
    assert metrics.registry.get_sample_value("mailhost_smtp_received_bytes_total") == 25
    assert metrics.registry.get_sample_value(
        "mailhost_connections_active", {"protocol": "smtp"}) == 0
