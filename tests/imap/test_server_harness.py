"""An in-process IMAP listener on an ephemeral loopback port, for the server tests.

Holds no tests itself; ``imap_host`` is the fixture the ``test_server_*`` modules use.
Clients (imaplib, imapclient, curl, mutt, mbsync) run in threads or subprocesses so
the reactor keeps serving while they block.
"""

from __future__ import annotations

import imaplib
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.endpoints import serverFromString

from mailhost.auth.directory import UserDirectory
from mailhost.auth.throttle import LoginThrottle
from mailhost.config import Config
from mailhost.imap.factory import IMAPFactory
from mailhost.limits import ConnectionLimits
from mailhost.settings import IMAPSettings, LimitsSettings
from mailhost.store.interfaces import DeliveryTarget
from tests.logins import login_service

USERS = {"alice@example.test": "secret", "bob@example.test": "hunter2"}
ALICE = ("alice@example.test", "secret")


def make_message(subject: str = "hello", body: str = "Hello world.\r\n", size: int = 0) -> bytes:
    head = (f"From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
            f"Date: Fri, 27 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '.')}"
            f"@example.test>\r\n\r\n")
    data = head.encode() + body.encode()
    if size > len(data):
        line = b"x" * 76 + b"\r\n"
        data += line * ((size - len(data)) // len(line) + 1)
    return data


@dataclass
class ImapHost:
    store: Any
    factory: IMAPFactory
    port: int
    config: Config
    listening: Any = None
    cafile: str | None = None
    extra: dict = field(default_factory=dict)

    async def deliver(self, data: bytes, user: str = "alice@example.test", folder: str = "INBOX",
                      flags=()) -> int:
        """Put one message in a folder through the store's writer; returns its UID."""
        writer = self.store.new_message()
        writer.write(data)
        (uid,) = await writer.commit([DeliveryTarget(user, folder, frozenset(flags))])
        return uid

    async def folder(self, name: str = "INBOX", user: str = "alice@example.test") -> Any:
        account = await self.store.open_account(user)
        return await account.open_folder(name)

    def client(self, login: bool = True) -> imaplib.IMAP4:
        """A blocking imaplib client (call from a thread)."""
        c = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        if login:
            c.login(*ALICE)
        return c

    def in_thread(self, fn, *args, **kwargs):
        return threads.deferToThread(fn, *args, **kwargs)


def make_store(tmp_path, kind: str) -> Any:
    if kind == "maildir":
        from mailhost.store.maildir import MaildirStore

        return MaildirStore(str(tmp_path / "mail"), fsync=False)
    from mailhost.store.memory import MemoryStore

    return MemoryStore()


def store_kind() -> str:
    try:
        import mailhost.store.maildir  # noqa: F401
    except ImportError:
        return "memory"
    return "maildir"


@pytest.fixture(name="imap_host")
def imap_host_fixture(tmp_path):
    """``await imap_host(**options) -> ImapHost``; every listener is stopped after the test."""
    hosts: list[ImapHost] = []

    async def start(allow_plaintext: str = "yes", tls: bool = False, store: Any = None,
                    kind: str | None = None, throttle: LoginThrottle | None = None,
                    url_fetcher: bool = False, **imap_options: Any) -> ImapHost:
        config = Config()
        for k, v in imap_options.items():
            setattr(config.imap, k, v)
        store = store if store is not None else make_store(tmp_path, kind or store_kind())
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
        settings = IMAPSettings.from_config(config)
        fetcher = None
        if url_fetcher:  # URLFETCH over the whole store, as service.py wires it
            from mailhost.imap.catenate import open_url
            from mailhost.urlfetch.fetcher import UrlAuthFetcher

            fetcher = UrlAuthFetcher(store.open_account, settings.urlauth_dir, open_url)
        factory = IMAPFactory(settings, login, tls_options=tls_options, url_fetcher=fetcher)
        # Connection limits sit in front of every listener, as makeService wires them.
        config.limits.exempt_networks = []
        config.limits.connection_rate = 0
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        listening = await endpoint.listen(
            ConnectionLimits.from_settings(LimitsSettings.from_config(config)).wrap("imap", factory))
        host = ImapHost(store, factory, listening.getHost().port, config, listening, cafile)
        hosts.append(host)
        return host

    yield start
    for host in hosts:
        for session in list(host.factory.sessions):
            if session.transport is not None:
                session.transport.abortConnection()
        pytest_twisted.blockon(host.listening.stopListening())


def wait_until(predicate, timeout: float = 5.0) -> bool:
    """Poll a condition from a client thread (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def raw(c: imaplib.IMAP4, line: bytes, tag: bytes | None = None) -> list[bytes]:
    """Send one raw command line; return every response line up to the tagged one."""
    tag = tag or line.split(b" ", 1)[0]
    c.send(line + b"\r\n")
    out = []
    for _ in range(100000):
        resp = c.readline()
        if not resp:
            break
        out.append(resp.rstrip(b"\r\n"))
        if resp.startswith(tag + b" "):
            break
    return out


class RssSampler:
    """Peak resident memory of this process while a block runs, sampled every 10 ms.

    ``ru_maxrss`` would not do: under pytest-xdist a worker's lifetime peak may come
    from an earlier test, which would make a growth check pass vacuously.
    """

    def __init__(self) -> None:
        import threading

        self.baseline = self.now()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())

    @property
    def grown_mib(self) -> float:
        return (self.peak - self.baseline) / 1024
