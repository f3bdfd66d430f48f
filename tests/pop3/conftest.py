"""An in-process POP3 listener on an ephemeral loopback port, over a store in tmp_path."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString

from mailhost.auth.directory import UserDirectory
from mailhost.auth.login import LoginService
from mailhost.auth.throttle import LoginThrottle
from mailhost.config import Config
from mailhost.pop3.factory import POP3Factory
from mailhost.store.interfaces import DeliveryTarget
from mailhost.store.maildir import MaildirStore

USERS = {"alice@example.test": "secret", "bob@example.test": "hunter2"}


@dataclass
class Pop3Host:
    store: Any
    factory: POP3Factory
    port: int
    config: Config
    listening: Any = None
    cafile: str | None = None
    extra: dict = field(default_factory=dict)

    async def deliver(self, data: bytes, user: str = "alice@example.test", flags=()) -> int:
        """Put one message in ``user``'s INBOX through the store's writer; returns its UID."""
        writer = self.store.new_message()
        writer.write(data)
        (uid,) = await writer.commit([DeliveryTarget(user, flags=frozenset(flags))])
        return uid

    async def folder(self, user: str = "alice@example.test") -> Any:
        account = await self.store.open_account(user)
        return await account.open_folder("INBOX")


def make_store(tmp_path) -> Any:
    """A MaildirStore under tmp_path; a second call gives a fresh object over the same files."""
    return MaildirStore(str(tmp_path / "mail"))


@pytest.fixture
def pop3(tmp_path):
    """``pop3(delete=..., allow_plaintext=..., tls=..., timeout=..., store=...) -> Pop3Host``."""
    hosts: list[Pop3Host] = []

    async def start(delete: str = "expunge", allow_plaintext: str = "yes", tls: bool = False,
              timeout: float = 600.0, store: Any = None,
              throttle: LoginThrottle | None = None) -> Pop3Host:
        config = Config()
        config.pop3.delete = delete
        config.pop3.timeout = timeout
        store = store if store is not None else make_store(tmp_path)
        directory = UserDirectory.in_memory(domains=["example.test"], users=USERS)
        login = LoginService.for_tests(directory, store, allow_plaintext=allow_plaintext,
                                       throttle=throttle)
        tls_options = cafile = None
        if tls:
            from mailhost.tls import server_options, write_selfsigned

            cafile = str(tmp_path / "cert.pem")
            write_selfsigned("localhost", cafile, str(tmp_path / "key.pem"))
            config.tls.cert, config.tls.key = cafile, str(tmp_path / "key.pem")
            tls_options = server_options(config.tls)
        factory = POP3Factory(config, login, tls_options=tls_options)
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        listening = await endpoint.listen(factory)
        host = Pop3Host(store, factory, listening.getHost().port, config, listening, cafile)
        hosts.append(host)
        return host

    yield start
    for host in hosts:
        pytest_twisted.blockon(defer.maybeDeferred(host.listening.stopListening))
        for session in list(host.factory.sessions):
            session.transport.abortConnection()
    for store in {id(h.store): h.store for h in hosts}.values():
        pytest_twisted.blockon(defer.maybeDeferred(store.close))


class RawClient:
    """A byte-exact POP3 client over a plain socket (for what poplib hides or refuses)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.greeting = self.line()

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

    def cmd(self, command: bytes) -> bytes:
        self.send(command + b"\r\n")
        return self.line()

    def multi(self) -> bytes:
        """The raw body of a multi-line response up to (not including) the '.' line."""
        while True:
            if self.buf.startswith(b".\r\n"):
                self.buf = self.buf[3:]
                return b""
            end = self.buf.find(b"\r\n.\r\n")
            if end >= 0:
                body, self.buf = self.buf[: end + 2], self.buf[end + 5 :]
                return body
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError(self.buf[-200:])
            self.buf += chunk

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


def unstuff(body: bytes) -> bytes:
    """Undo RFC 1939 byte-stuffing of a multi-line body."""
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
