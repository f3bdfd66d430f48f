"""MailHost: a whole mail host (SMTP, submission, POP3, IMAP) on ephemeral loopback ports.

It is the real ``makeService`` with a test configuration: an in-memory user directory,
a memory (or temporary Maildir) store, plaintext auth allowed, no login lockouts, and
fault injection in every session. Nothing leaves the machine: by default remote
recipients are refused (``554 5.7.1``); with ``outbound=True`` mail for remote
recipients is accepted from authenticated users and captured in memory
(``outbound_messages()``) instead of being queued for delivery. With ``capture=True``
the host is in capture mode (``[capture]``): every recipient of every domain gets a
mailbox of its own and any login succeeds.

Every method is for the reactor thread and returns a Deferred where it waits;
``mailhost.testing.running()`` gives a blocking proxy for code without Twisted.
"""

from __future__ import annotations

import email
import email.policy
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from mailhost.auth.checkers import InMemoryChecker
from mailhost.auth.directory import UserDirectory
from mailhost.auth.passwd import normalize_address
from mailhost.config import Config
from mailhost.mailview import MessageQuery, MessageSummary, NoSuchMessageId
from mailhost.outbound.interfaces import IOutboundQueue, IQueueWriter
from mailhost.store.interfaces import (
    DEFAULT_SPECIAL_FOLDERS,
    DeliveryTarget,
    IFolderListener,
    MessageInfo,
)
from mailhost.store.reader import read_all
from mailhost.testing import ownership
from mailhost.testing.faults import Fault, FaultHook, FaultSet
from mailhost.testing.faults.control import FaultScript
from mailhost.web.interfaces import IQueueListing, QueuedMessage, QueuedRecipient

log = Logger()

LOOPBACK = "127.0.0.1"
_EPHEMERAL = f"tcp:0:interface={LOOPBACK}"
# The same endpoint spelled differently: the service names listeners by description.
_EPHEMERAL_TLS = f"tcp:port=0:interface={LOOPBACK}"

#: Listener kinds ``protocols=`` may name, and the ``ports=`` keys of each (plain, TLS).
PROTOCOLS = ("smtp", "submission", "pop3", "imap")
_PORT_KEYS = {"smtp": ("smtp", None), "submission": ("submission", "smtps"),
              "pop3": ("pop3", "pop3s"), "imap": ("imap", "imaps")}


class MailHostTimeout(TimeoutError):
    """``wait_for_messages`` gave up; the message says what did arrive."""


@dataclass(frozen=True)
class ReceivedMessage:
    """One message that arrived in a user's INBOX, parsed with ``email.policy.default``."""

    user: str  # the mailbox (canonical address) it was delivered to
    folder: str
    uid: int
    sender: str | None  # the envelope sender from Return-Path ("" for <>), if any
    message: EmailMessage = field(repr=False)
    raw: bytes = field(repr=False)

    @property
    def subject(self) -> str | None:
        return self.message["Subject"]

    def __getitem__(self, header: str) -> Any:
        return self.message[header]


@dataclass(frozen=True)
class OutboundMessage:
    """A message for remote recipients, captured instead of relayed (``outbound=True``)."""

    sender: str
    recipients: list[str]
    message: EmailMessage = field(repr=False)
    raw: bytes = field(repr=False)
    arrival: datetime = field(default_factory=lambda: datetime.now(UTC), compare=False)


def parse_message(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def _return_path(msg: EmailMessage) -> str | None:
    value = msg.get("Return-Path")
    if value is None:
        return None
    return str(value).strip().strip("<>")


def as_bytes(message: bytes | str | EmailMessage) -> bytes:
    """Message bytes with CRLF line ends from bytes, text or an EmailMessage."""
    if isinstance(message, EmailMessage):
        data = message.as_bytes(policy=email.policy.SMTP)
    elif isinstance(message, str):
        data = message.encode("utf-8")
    else:
        data = bytes(message)
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@implementer(IFolderListener)
class _InboxListener:
    """Implements: IFolderListener; feeds ``MailHost.received`` as messages arrive."""

    def __init__(self, host: MailHost, user: str) -> None:
        self.host = host
        self.user = user

    def messages_added(self, folder: Any, infos: Sequence[MessageInfo]) -> None:
        for info in infos:
            self.host._arrived(self.user, folder, info)

    def flags_changed(self, folder: Any, infos: Sequence[MessageInfo]) -> None:
        pass

    def messages_expunged(self, folder: Any, uids: Sequence[int]) -> None:
        pass


@implementer(IQueueWriter)
class _CaptureWriter:
    """Implements: IQueueWriter, spooling to a temporary file."""

    def __init__(self, queue: _CaptureQueue, sender: str) -> None:
        self.queue = queue
        self.sender = sender
        self.size = 0
        self._spool: Any = tempfile.SpooledTemporaryFile(max_size=1024 * 1024)

    def write(self, data: bytes) -> None:
        self._spool.write(data)
        self.size += len(data)

    def commit(self, recipients: Sequence[Any]) -> defer.Deferred:
        d = self.prepare(recipients)
        self.release()
        return d

    def prepare(self, recipients: Sequence[Any]) -> defer.Deferred:
        self._spool.seek(0)
        raw = self._spool.read()
        self.abort()
        self._prepared: OutboundMessage | None = OutboundMessage(
            self.sender, [r.address for r in recipients], parse_message(raw), raw)
        return defer.succeed(f"capture{next(self.queue.ids)}")

    def release(self) -> None:
        if self._prepared is not None:
            self.queue.captured.append(self._prepared)
        self._prepared = None

    def withdraw(self) -> defer.Deferred:
        self._prepared = None
        return defer.succeed(None)

    def abort(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


@implementer(IOutboundQueue, IQueueListing)
class _CaptureQueue:
    """Implements: IOutboundQueue, IQueueListing; keeps "relayed" mail in memory,
    sends nothing, and lists it (the web UI's queue panel)."""

    def __init__(self) -> None:
        self.captured: list[OutboundMessage] = []
        self.ids = itertools.count(1)

    def new_message(self, sender: str, envid: str | None = None,
                    ret: str | None = None) -> _CaptureWriter:
        return _CaptureWriter(self, sender)

    def queued(self) -> list[QueuedMessage]:
        return [QueuedMessage(f"capture{n}", m.sender,
                              tuple(QueuedRecipient(r, "captured") for r in m.recipients),
                              m.arrival, len(m.raw))
                for n, m in enumerate(self.captured, 1)]


class MailHost:
    """An in-process SMTP + submission + POP3 + IMAP host for tests, like GreenMail.

    ``users`` maps addresses to passwords; ``aliases`` maps an address to its targets.
    ``store`` is ``"memory"`` (default) or ``"maildir"`` (a temporary directory).
    ``tls=True`` adds STARTTLS/STLS and implicit-TLS listeners with a throwaway
    certificate (``ca_file``). ``outbound=True`` captures mail for remote recipients
    instead of refusing it. ``metrics=True`` keeps this host's Prometheus metrics
    (``metric()``; needs ``prometheus_client``). ``capture=True``: capture mode, every
    recipient accepted into its own mailbox, any login accepted, nothing relayed.
    ``protocols`` names the listeners to run (of ``smtp``, ``submission``, ``pop3``,
    ``imap``; all by default); ``ports`` fixes a port per listener (``{"smtp": 2525}``;
    with ``tls=True`` also ``smtps``, ``pop3s``, ``imaps``), the others are ephemeral.
    ``web=True`` serves the web UI and REST API on loopback (``web_url``), with this
    host's faults and captured mail.
    """

    host = LOOPBACK

    def __init__(self, domains: Iterable[str] = ("example.test",),
                 users: Mapping[str, str] | None = None,
                 aliases: Mapping[str, list[str]] | None = None,
                 store: str = "memory", tls: bool = False, outbound: bool = False,
                 hostname: str = "localhost", reactor: Any = None,
                 metrics: bool = False, capture: bool = False,
                 protocols: Iterable[str] | None = None,
                 ports: Mapping[str, int] | None = None, web: bool = False) -> None:
        if store not in ("memory", "maildir"):
            raise ValueError(f"store must be 'memory' or 'maildir', not {store!r}")
        self.protocols = tuple(PROTOCOLS if protocols is None else protocols)
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise ValueError(f"protocols must name some of {', '.join(PROTOCOLS)}, "
                             f"not {list(self.protocols)!r}")
        known_ports = {key for kind in self.protocols
                       for key in _PORT_KEYS[kind][: 2 if tls else 1] if key}
        self.ports = dict(ports or {})
        if set(self.ports) - known_ports:
            raise ValueError(f"ports for {sorted(set(self.ports) - known_ports)}: "
                             f"no such listener (of {sorted(known_ports)})")
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.domains = [d.lower() for d in domains]
        self.hostname = hostname
        self.store_kind = store
        self.tls = tls
        self.outbound = outbound
        self.with_metrics = metrics
        self.with_web = web
        self.capture = capture
        self._initial_users = {normalize_address(u): p for u, p in (users or {}).items()}
        self._aliases = dict(aliases or {})
        self._registry: list[Fault] = []
        self.smtp = FaultSet("smtp", self._registry)
        self.pop3 = FaultSet("pop3", self._registry)
        self.imap = FaultSet("imap", self._registry)
        self.received: list[ReceivedMessage] = []
        self._waiters: list[tuple[int, defer.Deferred, Any]] = []
        self._reads = defer.DeferredLock()
        self._capture = _CaptureQueue()
        self._listening: dict[str, list[Any]] = {}
        self._watched: dict[str, tuple[Any, _InboxListener]] = {}
        self._tmpdir: str | None = None
        self.service: Any = None
        self.store: Any = None
        self.directory: Any = None  # a UserDirectory (CaptureDirectory in capture mode)
        self._users: InMemoryChecker | None = None  # who add_user made (and their passwords)
        self._unsubscribe: Any = None
        self.ca_file: str | None = None
        self.running = False

    # -- lifecycle ------------------------------------------------------------------

    def _config(self, tmpdir: str) -> Config:
        config = Config()
        config.server.hostname = self.hostname
        config.server.domains = list(self.domains)
        config.server.data_dir = tmpdir
        config.server.allow_plaintext_auth = "yes"
        config.server.shutdown_grace = 0.0
        config.auth.create_postmaster = False
        config.auth.max_failures = 0  # a test's wrong password must not lock out 127.0.0.1
        config.auth.cache_ttl = 0.0
        limits = getattr(config, "limits", None)
        if limits is not None:
            limits.connection_rate = 0.0  # tests open many connections quickly
        config.store.backend = self.store_kind  # type: ignore[assignment]
        config.store.path = os.path.join(tmpdir, "mail")
        config.store.fsync = False
        config.outbound.queue_dir = os.path.join(tmpdir, "queue")
        # Belt and braces: nothing reaches the spool, and a smarthost on the discard
        # port of loopback means nothing could leave the machine even if it did.
        config.outbound.smarthost = f"{LOOPBACK}:9"
        # The system resolver leaves a resolv.conf re-read timer behind (trial calls
        # that a dirty reactor); nothing here needs DNS.
        config.outbound.resolver = f"{LOOPBACK}:9"
        config.capture.enabled = self.capture
        sections: dict[str, Any] = {"smtp": config.smtp, "submission": config.submission,
                                    "pop3": config.pop3, "imap": config.imap}
        for kind, section in sections.items():
            section.listen = [self._endpoint(kind, 0)] if kind in self.protocols else []
            section.listen_tls = []
        config.metrics.listen = _EPHEMERAL if self.with_metrics else ""
        config.web.listen = _EPHEMERAL if self.with_web else ""
        config.web.faults = self.with_web
        if self.tls:
            from mailhost.tls import write_selfsigned

            cert = os.path.join(tmpdir, "tls", "cert.pem")
            key = os.path.join(tmpdir, "tls", "key.pem")
            write_selfsigned(self.hostname, cert, key)
            config.tls.cert, config.tls.key = cert, key
            self.ca_file = cert
            for kind in ("submission", "pop3", "imap"):
                if kind in self.protocols:
                    sections[kind].listen_tls = [self._endpoint(kind, 1)]
        return config

    def _endpoint(self, kind: str, index: int) -> str:
        """The endpoint of listener ``kind`` (plain: 0, implicit TLS: 1): the port
        ``ports`` gives it, else an ephemeral one."""
        port = self.ports.get(_PORT_KEYS[kind][index] or "", 0)
        if index:
            return f"tcp:port={port}:interface={LOOPBACK}" if port else _EPHEMERAL_TLS
        return f"tcp:{port}:interface={LOOPBACK}" if port else _EPHEMERAL

    @defer.inlineCallbacks
    def start(self):
        """Deferred firing with this host once every listener is bound (ports known)."""
        if self.running:
            raise RuntimeError("MailHost is already running")
        from mailhost.service import makeService

        self._tmpdir = tempfile.mkdtemp(prefix="mailhost-test-")
        try:
            config = self._config(self._tmpdir)
            if self.store_kind == "memory":
                from mailhost.store.memory import MemoryStore

                self.store = MemoryStore()
            else:
                from mailhost.store.maildir import MaildirStore

                self.store = MaildirStore(config.store.path, fsync=False)
            if self.capture:
                # Capture mode: makeService builds the accept-everything directory and
                # checker; the users made here are only remembered (for reset).
                self._users = InMemoryChecker(dict(self._initial_users))
                directory, checkers = None, None
            else:
                directory = UserDirectory.in_memory(self.domains, self._initial_users,
                                                    self._aliases)
                self._users = directory.checker
                checkers = [directory.checker]
            # Remote mail is captured (outbound=True) or refused: never the spool.
            self.service = makeService(config, store=self.store, checkers=checkers,
                                       directory=directory,
                                       queue=self._capture, relay=self.outbound,
                                       dispatch_hook=FaultHook(self._registry, self.reactor),
                                       faults=FaultScript(self._registry),
                                       queue_listing=self._capture,
                                       reactor=self.reactor)
            self.directory = self.service.directory
            self.service.startService()
            self.running = True
            ownership.host_started(self)
            self._listening = yield self.service.wait_listening()
            if self.capture:
                # Mailboxes appear with their first message: hear of every arrival.
                self._unsubscribe = self.service.mail_view.subscribe(self._viewed)
            for user in self._initial_users:
                yield self._watch(user)
        except BaseException:
            yield self._teardown()
            raise
        return self

    @defer.inlineCallbacks
    def stop(self):
        """Deferred firing once every connection, listener, timer and temp file is gone."""
        yield self._teardown()

    @defer.inlineCallbacks
    def _teardown(self):
        for _n, d, timer in self._waiters:
            if timer.active():
                timer.cancel()
            if not d.called:
                d.errback(RuntimeError("MailHost stopped before the messages arrived"))
        self._waiters = []
        for folder, listener in self._watched.values():
            folder.remove_listener(listener)
        self._watched = {}
        if self._unsubscribe is not None:
            self._unsubscribe, unsubscribe = None, self._unsubscribe
            unsubscribe()
        yield self._drop_connections()
        self.running = False
        ownership.host_stopped(self)
        if self.service is not None and self.service.running:
            # Also after a failed start: stop what did bind.
            yield self.service.stopService()
        self.service = None
        self._listening = {}
        if self._tmpdir is not None:
            tmp, self._tmpdir = self._tmpdir, None
            if self.store_kind == "maildir":
                yield threads.deferToThread(shutil.rmtree, tmp, True)
            else:
                shutil.rmtree(tmp, ignore_errors=True)

    def _drop_connections(self) -> defer.Deferred:
        """Abort every open client connection; fires once all of them are closed."""
        if self.service is None or self.service.sessions is None:
            return defer.succeed(None)
        d = self.service.sessions.abort_all()
        # Bounded: an abort is immediate, but never let stop() hang a test run.
        d.addTimeout(5.0, self.reactor)
        d.addErrback(lambda f: log.warn("connections still open after abort: {e}",
                                        e=f.getErrorMessage()))
        return d

    # -- ports ----------------------------------------------------------------------

    def _port(self, kind: str, index: int) -> int:
        if not self.running:
            raise RuntimeError("MailHost is not started")
        if kind not in self.protocols:
            raise AttributeError(f"no {kind} listener (protocols={list(self.protocols)!r})")
        ports = self._listening.get(kind, [])
        if index >= len(ports):
            raise AttributeError(f"no {'TLS ' if index else ''}{kind} listener"
                                 + (" (pass tls=True)" if index else ""))
        return ports[index].getHost().port

    @property
    def smtp_port(self) -> int:
        return self._port("smtp", 0)

    @property
    def submission_port(self) -> int:
        return self._port("submission", 0)

    @property
    def pop3_port(self) -> int:
        return self._port("pop3", 0)

    @property
    def imap_port(self) -> int:
        return self._port("imap", 0)

    @property
    def web_port(self) -> int:
        """The web UI and REST API (``web=True``)."""
        if not self.running:
            raise RuntimeError("MailHost is not started")
        if not self.with_web:
            raise AttributeError("no web listener (pass web=True)")
        return self._listening["web"][0].getHost().port

    @property
    def web_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the web UI; the API is under ``/api/``."""
        return f"http://{LOOPBACK}:{self.web_port}"

    @property
    def smtps_port(self) -> int:
        """Implicit-TLS submission (like 465)."""
        return self._port("submission", 1)

    @property
    def pop3s_port(self) -> int:
        return self._port("pop3", 1)

    @property
    def imaps_port(self) -> int:
        return self._port("imap", 1)

    # -- users and mail -------------------------------------------------------------

    def add_user(self, address: str, password: str) -> defer.Deferred:
        """Create a user (its mailbox exists at once); Deferred firing when watched."""
        self._require_running()
        self._checker().add_user(address, password)
        return self._watch(normalize_address(address))

    def users(self) -> list[str]:
        return sorted(self._checker().users) if self._users is not None else []

    def _checker(self) -> InMemoryChecker:
        """The in-memory checker of the users ``start`` and ``add_user`` made."""
        if self._users is None:
            raise RuntimeError("MailHost is not started (call start() first)")
        return self._users

    @defer.inlineCallbacks
    def _watch(self, user: str):
        if user in self._watched:
            return
        account = yield self.store.open_account(user)
        folder = yield account.open_folder("INBOX")
        listener = _InboxListener(self, user)
        folder.add_listener(listener)
        self._watched[user] = (folder, listener)

    def _viewed(self, summary: MessageSummary) -> None:
        """Capture mode: a message arrived in some mailbox (the mail view says)."""
        if summary.folder != "INBOX" or summary.mailbox in self._watched:
            return  # not an arrival, or a watched user's INBOX reports it itself
        view = self.service.mail_view

        def read() -> defer.Deferred:
            d = view.raw(summary.id)
            d.addErrback(lambda f: f.trap(NoSuchMessageId) and None)
            return d

        d = self._reads.run(read)

        def record(raw: bytes | None) -> None:
            if raw is None:
                return
            msg = parse_message(raw)
            self.received.append(ReceivedMessage(summary.mailbox, summary.folder, summary.uid,
                                                 _return_path(msg), msg, raw))
            self._check_waiters()

        d.addCallback(record)
        d.addErrback(lambda f: log.failure("reading a captured message failed", f))

    def _arrived(self, user: str, folder: Any, info: MessageInfo) -> None:
        d = self._reads.run(self._read, folder, info.uid)

        def record(raw: bytes | None) -> None:
            if raw is None:
                return
            msg = parse_message(raw)
            self.received.append(ReceivedMessage(user, folder.name, info.uid,
                                                 _return_path(msg), msg, raw))
            self._check_waiters()

        d.addCallback(record)
        d.addErrback(lambda f: log.failure("reading a delivered message failed", f))

    @defer.inlineCallbacks
    def _read(self, folder: Any, uid: int):
        try:
            reader = yield folder.read_message(uid)
        except Exception:
            return None  # expunged before we got to it
        data = yield defer.ensureDeferred(read_all(reader))  # closes the reader
        return data

    def _mailboxes(self, address: str) -> list[str]:
        self._require_running()
        assert self.directory is not None  # made by start()
        found = self.directory.lookup(address)
        if not found:
            raise KeyError(f"{address}: no such local user (add it with add_user)")
        return found

    @defer.inlineCallbacks
    def messages(self, address: str, folder: str = "INBOX"):
        """Deferred firing with the messages in ``address``'s folder, in UID order."""
        user = self._mailboxes(address)[0]
        account = yield self.store.open_account(user)
        box = yield account.open_folder(folder)
        out = []
        for info in box.messages():
            raw = yield self._read(box, info.uid)
            if raw is not None:
                out.append(parse_message(raw))
        return out

    def deliver(self, address: str, message: bytes | str | EmailMessage,
                folder: str = "INBOX") -> defer.Deferred:
        """Put a message straight into the store (no SMTP); Deferred with the UIDs."""
        targets = [DeliveryTarget(user, folder) for user in self._mailboxes(address)]
        writer = self.store.new_message()
        try:
            writer.write(as_bytes(message))
        except Exception:
            writer.abort()
            raise
        return defer.maybeDeferred(writer.commit, targets)

    def wait_for_messages(self, n: int, timeout: float = 5.0) -> defer.Deferred:
        """Deferred firing with ``received`` once it holds at least ``n`` messages.

        Fails with ``MailHostTimeout`` (a ``TimeoutError``) after ``timeout`` seconds,
        saying what did arrive.
        """
        if len(self.received) >= n:
            return defer.succeed(list(self.received))
        d: defer.Deferred = defer.Deferred()

        def expire() -> None:
            self._waiters = [w for w in self._waiters if w[1] is not d]
            got = ", ".join(f"{m.user}: {m.subject!r}" for m in self.received) or "nothing"
            d.errback(MailHostTimeout(
                f"waited {timeout:g}s for {n} message(s), {len(self.received)} arrived: {got}"))

        timer = self.reactor.callLater(timeout, expire)
        self._waiters.append((n, d, timer))
        return d

    def _check_waiters(self) -> None:
        ready = [w for w in self._waiters if len(self.received) >= w[0]]
        self._waiters = [w for w in self._waiters if w not in ready]
        for _n, d, timer in ready:
            if timer.active():
                timer.cancel()
            d.callback(list(self.received))

    def metric(self, name: str, **labels: str) -> float:
        """The value of one of this host's Prometheus samples (``metrics=True``), such
        as ``metric("mailhost_connections_total", protocol="smtp")``; 0 if none yet."""
        self._require_running()
        if self.service.metrics is None:
            raise RuntimeError("this MailHost keeps no metrics (pass metrics=True)")
        value = self.service.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else float(value)

    def outbound_messages(self) -> list[OutboundMessage]:
        """Mail accepted for remote recipients (only with ``outbound=True``)."""
        return list(self._capture.captured)

    # -- faults ---------------------------------------------------------------------

    def faults(self) -> list[Fault]:
        """Every scripted fault still registered (with its ``hits``)."""
        return list(self._registry)

    def clear_faults(self) -> None:
        self._registry[:] = []

    # -- the mail view: every mailbox at once ------------------------------------------

    @property
    def mail_view(self) -> Any:
        """The host's ``IMailView`` (``mailhost.mailview``): list, search, delete, purge
        and release the mail of every mailbox, and subscribe to arrivals."""
        self._require_running()
        return self.service.mail_view

    @defer.inlineCallbacks
    def messages_for_domain(self, domain: str):
        """Deferred firing with the messages in the INBOX of every mailbox of ``domain``
        (``ReceivedMessage``s, oldest first), like GreenMail's
        ``getReceivedMessagesForDomain``."""
        view = self.mail_view
        found = yield view.messages(MessageQuery(domain=domain, folder="INBOX"))
        out = []
        for summary in reversed(found):
            try:
                raw = yield view.raw(summary.id)
            except NoSuchMessageId:
                continue  # deleted meanwhile
            msg = parse_message(raw)
            out.append(ReceivedMessage(summary.mailbox, summary.folder, summary.uid,
                                       _return_path(msg), msg, raw))
        return out

    @defer.inlineCallbacks
    def purge(self):
        """Delete every stored message of every mailbox (users and folders stay), like
        GreenMail's ``purgeEmailFromAllMailboxes``; Deferred firing with how many.
        ``received`` is emptied too: its messages are gone."""
        count = yield self.mail_view.purge()
        yield self._reads.run(defer.succeed, None)  # reads in flight land first
        self.received.clear()
        return count

    # -- isolation ------------------------------------------------------------------

    @defer.inlineCallbacks
    def reset(self, keep_users: bool = False):
        """Back to the state just after start: no mail in any mailbox, no extra folders,
        no faults, no open connections, and only the users given to the constructor
        (with their passwords). ``keep_users=True`` keeps every user as it is now."""
        self._require_running()
        self.clear_faults()
        yield self._drop_connections()
        users = self._checker().users
        mailboxes = set(users)
        if self.service.mail_view is not None:
            mailboxes.update((yield self.service.mail_view.mailboxes()))
        for user in sorted(mailboxes):
            account = yield self.store.open_account(user)
            names = yield account.list_folders()
            for name in names:
                if name != "INBOX" and name not in DEFAULT_SPECIAL_FOLDERS:
                    try:
                        yield account.delete_folder(name)
                    except Exception:
                        pass  # a parent deleted first took it along
                    continue
                box = yield account.open_folder(name)
                uids = [info.uid for info in box.messages()]
                if uids:
                    yield box.set_flags(uids, ["\\Deleted"], "add")
                    yield box.expunge(uids)
            if not keep_users and user in users and user not in self._initial_users:
                del users[user]
                watched = self._watched.pop(user, None)
                if watched is not None:
                    watched[0].remove_listener(watched[1])
        if not keep_users:
            for user, password in self._initial_users.items():
                users[user] = password
        # Let in-flight reads of just-expunged messages finish before clearing.
        yield self._reads.run(defer.succeed, None)
        self.received.clear()
        self._capture.captured.clear()

    def _require_running(self) -> None:
        if not self.running:
            raise RuntimeError("MailHost is not started (call start() first)")
