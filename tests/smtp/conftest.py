"""An in-process SMTP listener on an ephemeral loopback port, plus a raw socket client."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhost.auth.directory import UserDirectory
from mailhost.auth.throttle import LoginThrottle
from mailhost.config import Config
from mailhost.limits import ConnectionLimits
from mailhost.outbound.interfaces import IOutboundQueue, IQueueWriter
from mailhost.settings import LimitsSettings, RelaySettings, SMTPSettings
from mailhost.smtp.factory import SMTPFactory
from mailhost.smtp.policy import RecipientPolicy
from mailhost.store.memory import MemoryStore
from tests.logins import login_service

USERS = {"alice@example.test": "secret", "bob@example.test": "hunter2",
         "carol@example.test": "pw3"}
ALIASES = {"info@example.test": ["alice@example.test"],
           "team@example.test": ["alice@example.test", "bob@example.test"]}


@implementer(IQueueWriter)
class FakeQueueWriter:
    def __init__(self, queue: FakeQueue, sender: str, envid, ret) -> None:
        self.queue, self.sender, self.envid, self.ret = queue, sender, envid, ret
        self.chunks: list[bytes] = []
        self.size = 0
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)

    def commit(self, recipients):
        d = self.prepare(recipients)
        self.release()
        return d

    def prepare(self, recipients):
        self.prepared = (self.sender, list(recipients), b"".join(self.chunks))
        return defer.succeed(f"Q{len(self.queue.committed) + 1}")

    def release(self):
        self.queue.committed.append(self.prepared)

    def withdraw(self):
        self.queue.withdrawn.append(self.prepared)
        return defer.succeed(None)

    def abort(self) -> None:
        self.aborted = True


@implementer(IOutboundQueue)
class FakeQueue:
    """Collects what SMTP would spool for remote recipients."""

    def __init__(self) -> None:
        self.committed: list[tuple[str, list, bytes]] = []
        self.withdrawn: list[tuple[str, list, bytes]] = []
        self.writers: list[FakeQueueWriter] = []

    def new_message(self, sender: str, envid=None, ret=None) -> FakeQueueWriter:
        w = FakeQueueWriter(self, sender, envid, ret)
        self.writers.append(w)
        return w


@dataclass
class SMTPHost:
    store: Any
    factory: SMTPFactory
    port: int
    config: Config
    queue: FakeQueue | None
    listening: Any = None
    cafile: str | None = None
    extra: dict = field(default_factory=dict)

    @defer.inlineCallbacks
    def read_messages(self, user: str = "alice@example.test"):
        account = yield self.store.open_account(user)
        folder = yield account.open_folder("INBOX")
        out = []
        for info in folder.messages():
            f = yield folder.open_message(info.uid)
            try:
                out.append(f.read())
            finally:
                f.close()
        return out


def _result(d: defer.Deferred) -> Any:
    """The result of a Deferred that has already fired (a TCP listen does, at once)."""
    out: list = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


@pytest.fixture
def smtp_host(tmp_path):
    """``smtp_host(submission=..., tls=..., queue=True, store=..., **smtp_limits) -> SMTPHost``."""
    hosts: list[SMTPHost] = []

    def start(submission: bool = False, tls: bool = False, queue: bool = True,
              store: Any = None, allow_plaintext: str = "yes", relay_networks=(),
              enforce_sender: bool = True, throttle: LoginThrottle | None = None,
              **limits: Any) -> SMTPHost:
        config = Config()
        config.server.hostname = "mx.example.test"
        config.server.domains = ["example.test", "example.org"]
        config.smtp.relay_networks = list(relay_networks)
        config.submission.enforce_sender = enforce_sender
        for key, value in limits.items():
            assert hasattr(config.smtp, key), key
            setattr(config.smtp, key, value)
        store = store if store is not None else MemoryStore()
        directory = UserDirectory.in_memory(domains=["example.test", "example.org"],
                                            users=USERS, aliases=ALIASES)
        login = login_service(directory, store, allow_plaintext=allow_plaintext,
                              throttle=throttle)
        tls_options = cafile = None
        if tls:
            from mailhost.tls import server_options, write_selfsigned

            cafile = str(tmp_path / "cert.pem")
            if not (tmp_path / "cert.pem").exists():
                write_selfsigned("localhost", cafile, str(tmp_path / "key.pem"))
            config.tls.cert, config.tls.key = cafile, str(tmp_path / "key.pem")
            tls_options = server_options(config.tls)
        fake_queue = FakeQueue() if queue else None
        relay = RelaySettings.from_config(config)
        policy = RecipientPolicy(directory, relay.relay_networks, can_queue=queue,
                                 default_domain=relay.default_domain)
        factory = SMTPFactory(SMTPSettings.from_config(config), store, directory, login,
                              policy, queue=fake_queue, submission=submission,
                              tls_options=tls_options)
        # Connection limits live in front of every listener, as makeService wires them;
        # loopback is not exempt here, so the per-address limit is testable.
        config.limits.exempt_networks = []
        config.limits.connection_rate = 0
        limited = ConnectionLimits.from_settings(LimitsSettings.from_config(config)).wrap(
            "submission" if submission else "smtp", factory)
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        listening = _result(endpoint.listen(limited))
        host = SMTPHost(store, factory, listening.getHost().port, config, fake_queue,
                        listening, cafile)
        hosts.append(host)
        return host

    yield start
    for host in hosts:
        pytest_twisted.blockon(host.listening.stopListening())
        for session in list(host.factory.sessions):
            session.transport.abortConnection()


class RawClient:
    """A byte-exact SMTP client over a plain socket (for what smtplib hides or refuses)."""

    def __init__(self, port: int, timeout: float = 10.0, greet: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.greeting = self.reply() if greet else None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> bytes:
        """One whole (possibly multi-line) reply, lines joined by LF."""
        lines = [self.line()]
        while len(lines[-1]) > 3 and lines[-1][3:4] == b"-":
            lines.append(self.line())
        return b"\n".join(lines)

    def cmd(self, command: bytes) -> bytes:
        self.send(command + b"\r\n")
        return self.reply()

    def code(self, command: bytes) -> int:
        return int(self.cmd(command)[:3])

    def closed(self) -> bool:
        """True when the server has closed the connection (after whatever is buffered)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return False

    def starttls(self, cafile: str) -> None:
        ctx = ssl.create_default_context(cafile=cafile)
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")

    def close(self) -> None:
        self.sock.close()
