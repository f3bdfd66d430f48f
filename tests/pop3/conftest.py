"""An in-process POP3 listener on an ephemeral loopback port, over a store in tmp_path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString

from mailhost.auth.directory import UserDirectory
from mailhost.auth.throttle import LoginThrottle
from mailhost.config import Config
from mailhost.pop3.factory import POP3Factory
from mailhost.settings import POP3Settings
from mailhost.store.interfaces import DeliveryTarget
from mailhost.store.maildir import MaildirStore
from tests.logins import login_service

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
    """A MaildirStore under tmp_path (a test may open a second one over the same files)."""
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
        login = login_service(directory, store, allow_plaintext=allow_plaintext,
                              throttle=throttle)
        tls_options = cafile = None
        if tls:
            from mailhost.tls import server_options, write_selfsigned

            cafile = str(tmp_path / "cert.pem")
            write_selfsigned("localhost", cafile, str(tmp_path / "key.pem"))
            config.tls.cert, config.tls.key = cafile, str(tmp_path / "key.pem")
            tls_options = server_options(config.tls)
        factory = POP3Factory(POP3Settings.from_config(config), login, tls_options=tls_options)
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
