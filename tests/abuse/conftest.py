"""A whole ``makeService`` mail host in this process, its DNS the test DNS server.

Clients are real ones (smtplib in a thread, swaks) over loopback sockets; a client
may bind another loopback address (127.0.0.3) to stand for another machine.
"""

from __future__ import annotations

import os
import smtplib
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from mailhost.auth.directory import UserDirectory
from mailhost.config import Config
from mailhost.service import makeService
from mailhost.store.memory import MemoryStore
from tests.mailhost_process import free_port

USERS = {"alice@example.test": "alice-pw", "bob@example.test": "bob-pw"}


class Host:
    """One mail host: config (change it before ``start``), store, running service."""

    def __init__(self, data_dir: str, dns: tuple[str, int], ip: str = "127.0.0.1") -> None:
        self.ip = ip
        self.port, self.sub_port = free_port(ip), free_port(ip)
        c = self.config = Config()
        c.server.hostname = "mx.example.test"
        c.server.domains = ["example.test"]
        c.server.data_dir = data_dir
        c.server.allow_plaintext_auth = "yes"
        c.server.shutdown_grace = 0.0
        c.auth.create_postmaster = False
        c.auth.max_failures = 0
        c.limits.connection_rate = 0.0
        c.store.backend = "memory"
        c.smtp.listen = [f"tcp:{self.port}:interface={ip}"]
        c.submission.listen = [f"tcp:{self.sub_port}:interface={ip}"]
        c.pop3.listen = c.imap.listen = []
        c.outbound.queue_dir = os.path.join(data_dir, "queue")
        c.outbound.fsync = False
        c.outbound.smarthost = "127.0.0.1:9"
        c.dns.nameservers = [f"{dns[0]}:{dns[1]}"]
        c.dns.timeout = 1.0
        os.makedirs(data_dir, exist_ok=True)
        self.store = MemoryStore()
        self.directory = UserDirectory.in_memory(["example.test"], USERS)
        self.service: Any = None

    async def start(self) -> Host:
        self.service = makeService(self.config, store=self.store,
                                   checkers=[self.directory.checker],
                                   directory=self.directory, reactor=reactor)
        self.service.startService()
        await self.service.wait_listening()
        return self

    async def stop(self) -> None:
        if self.service is not None:
            service, self.service = self.service, None
            await service.stopService()

    async def inbox(self, user: str) -> list[bytes]:
        account = await self.store.open_account(user)
        folder = await account.open_folder("INBOX")
        out = []
        for info in folder.messages():
            f = await folder.open_message(info.uid)
            out.append(f.read())
            f.close()
        return out


def message(subject: str = "hello") -> bytes:
    return (f"From: someone@sender.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
            f"\r\nHello.\r\n").encode()


def send(host: Host, sender: str, rcpts: list[str], source: str = "127.0.0.1",
         login: tuple[str, str] | None = None, submission: bool = False,
         body: bytes | None = None) -> dict:
    """One message by smtplib; the refusals of ``sendmail`` propagate."""
    port = host.sub_port if submission else host.port
    family_host = host.ip
    with smtplib.SMTP(family_host, port, source_address=(source, 0), timeout=30) as s:
        s.ehlo("client.sender.test")
        if login:
            s.login(*login)
        return s.sendmail(sender, rcpts, body or message())


@pytest.fixture
def make_host(tmp_path, dns_server):
    """``make_host(name)`` → a Host (not started) whose DNS is ``dns_server``;
    every started host is stopped after the test."""
    made: list[Host] = []

    def make(name: str = "mh", ip: str = "127.0.0.1") -> Host:
        host = Host(str(tmp_path / name), dns_server.address, ip=ip)
        made.append(host)
        return host

    yield make
    for host in made:
        pytest_twisted.blockon(Deferred.fromCoroutine(host.stop()))
