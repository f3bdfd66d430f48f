"""The outbound queue as a Twisted service: spool, scheduler, routing, DSNs, wired.

``OutboundService.queue`` is the ``IOutboundQueue`` SMTP streams remote mail into.
The service owns everything that is not the SMTP client itself: where bounces go
(the store when the sender is local, else the queue), and local delivery when an
MX points back at us for one of our own domains.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailhost.message.target import IDeliveryTarget
from mailhost.outbound import dsn
from mailhost.outbound.client import DELIVERED, PERMANENT, Job, Outcome
from mailhost.outbound.envelope import Envelope
from mailhost.outbound.interfaces import IOutboundQueue, IQueueWriter, QueueRecipient
from mailhost.outbound.mtasts import MTASTS
from mailhost.outbound.queue_target import QueueTarget
from mailhost.outbound.routing import Router, make_resolver, resolver_name
from mailhost.outbound.scheduler import Scheduler
from mailhost.outbound.security import TransportSecurity
from mailhost.outbound.spool import SpoolFiles, open_message_reader
from mailhost.outbound.spool_writer import SpoolWriter
from mailhost.outbound.tlsrpt import TLSReporter
from mailhost.settings import OutboundSettings
from mailhost.store.interfaces import DeliveryTarget, IMailStore
from mailhost.store.mailbox_target import MailboxTarget

log = Logger()

#: How long stopService waits for spool writes in flight (a hung disk must not
#: hang the shutdown).
SPOOL_DRAIN_TIMEOUT = 30.0


async def deliver(target: IDeliveryTarget,
                  produce: Callable[[Callable[[bytes], None]], Awaitable[None]]) -> None:
    """One message the queue makes itself (a DSN, a local copy) through one target:
    ``produce`` writes it; begin, prepare and commit, or abort on any failure."""
    try:
        target.begin()
        await produce(target.write)
        await defer.maybeDeferred(target.prepare)
    except BaseException:
        await defer.maybeDeferred(target.abort)
        raise
    target.commit()


@implementer(IOutboundQueue)
class OutboundQueue:
    """Implements: IOutboundQueue over the spool; committed messages go to the scheduler."""

    def __init__(self, files: SpoolFiles, reactor: Any) -> None:
        self.files = files
        self.reactor = reactor
        self.scheduler: Scheduler | None = None
        self._ready_dirs = False
        #: With no scheduler in this process (a worker of ``server.workers`` other
        #: than the one that runs it), told the id of each message committed.
        self.on_spooled: Callable[[str], None] | None = None

    def new_message(
        self, sender: str, envid: str | None = None, ret: str | None = None
    ) -> IQueueWriter:
        if not self._ready_dirs:
            self.files.ensure_sync()  # a few mkdirs, once
            self._ready_dirs = True
        return SpoolWriter(self.files, sender, envid, ret, self._committed, self.reactor.seconds)

    def _committed(self, env: Envelope) -> None:
        if self.scheduler is not None:
            self.scheduler.add(env)
        elif self.on_spooled is not None:
            self.on_spooled(env.id)
        # Otherwise the scheduler finds it in the spool when it starts.


def make_spool(settings: OutboundSettings, reactor: Any, worker: int | None = None) -> SpoolFiles:
    """The queue's storage: the spool directory, or (``[queue] backend = "postgresql"``)
    the shared PostgreSQL queue with the directory for this node's working copies (a
    directory per worker of ``server.workers``: each is a node of its own, and a
    worker that starts clears its directory of its predecessor's copies)."""
    if settings.queue_backend == "postgresql":
        from mailhost.db.database import Database
        from mailhost.outbound.pg_queue import PgSpoolFiles, check_schema

        check_schema(settings.queue_dsn)
        db = Database(settings.queue_dsn, max_size=4, reactor=reactor, name="mailhost-queue")
        copies = settings.queue_dir
        if worker is not None:
            copies = os.path.join(copies, f"worker-{worker}")
        return PgSpoolFiles(copies, db, lease=settings.queue_lease, reactor=reactor)
    return SpoolFiles(settings.queue_dir, fsync=settings.fsync, reactor=reactor)


def listen_addresses(descriptions: Iterable[str]) -> set[tuple[str, int]]:
    """(interface, port) of 'tcp:PORT:interface=ADDR' endpoint strings ('' = any)."""
    out = set()
    for desc in descriptions:
        parts = re.split(r"(?<!\\):", desc)
        if not parts or parts[0] not in ("tcp", "tcp6", "ssl"):
            continue
        port = None
        interface = ""
        for p in parts[1:]:
            key, eq, value = p.partition("=")
            if not eq and port is None and key.isdigit():
                port = int(key)
            elif key == "port" and value.isdigit():
                port = int(value)
            elif key == "interface":
                interface = value.replace("\\:", ":")
        if port:
            out.add((interface, port))
    return out


class OutboundService(service.Service):
    """The queue runner; ``.queue`` provides IOutboundQueue.

    ``resolver`` (an IResolver) overrides ``settings.resolver``.
    ``local_addresses`` are (address, port) pairs we accept SMTP on, so an MX that
    points back at us is recognised (the composition root passes those of the
    ``smtp.listen`` endpoints, see ``listen_addresses``); ``add_local_address`` adds
    ports learnt after listening: ``listening()`` (the composition root's
    ``wait_listening``) fires with ``{kind: [IListeningPort]}`` once they are bound.
    ``use_settings`` hands over reloaded settings.
    """

    def __init__(
        self,
        settings: OutboundSettings,
        store: IMailStore,
        directory: Any,
        reactor: Any = None,
        resolver: Any = None,
        local_addresses: Iterable[tuple[str, int]] | None = None,
        listening: Callable[[], defer.Deferred[Any]] | None = None,
        lookup: Any = None,
        run_scheduler: bool = True,
        worker: int | None = None,
    ) -> None:
        self.setName("outbound")  # Service declares name as None: set, not overridden
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.settings = settings
        self.store = store
        self.directory = directory
        self.reactor = reactor
        self._resolver = resolver
        # The host's IDNSLookup ([dns]): routing (unless ``resolver`` or a deprecated
        # ``outbound.resolver`` says otherwise), TLSA and MTA-STS lookups.
        self._lookup = lookup
        self.files = make_spool(settings, reactor, worker)
        # [queue] backend = "postgresql": claims and leases for this node's scheduler.
        self.leases: Any = None
        self.queue = OutboundQueue(self.files, reactor)
        self.local_addresses = set(local_addresses or ())
        self.scheduler: Scheduler | None = None
        self._resolver_in_use: Any = None
        self._listening = listening
        # False in all workers of ``server.workers`` but one: they only write to the
        # spool (``queue``), and the one scheduler learns of it (``adopt_spooled``).
        # The PostgreSQL queue runs a scheduler in every worker (claims and leases
        # share the work between them as between nodes).
        self.run_scheduler = run_scheduler
        #: Told of every delivery attempt's per-recipient results (this host's metrics).
        self.attempt_observers: list[Any] = []
        #: Records TLS results per recipient domain in TLS-RPT's shape (tlsrpt.py);
        #: its ``observers`` are told of each (this host's metrics).
        self.tls_reports = TLSReporter(settings.tls_report_dir, reactor.seconds)

    def add_local_address(self, address: str, port: int) -> None:
        self.local_addresses.add((address, port))
        if self.scheduler is not None:
            self.scheduler.local_addresses.add((address, port))

    def use_settings(self, settings: OutboundSettings) -> None:
        """Reload: hand new settings to the scheduler, with a new router when the port
        or smarthost changed (the resolver stays: ``outbound.resolver`` needs a restart)."""
        old, self.settings = self.settings, settings
        if self.scheduler is None:
            return
        router = None
        if (settings.port, settings.smarthost) != (old.port, old.smarthost):
            router = self._router(self._resolver_in_use)
        self.scheduler.use_settings(settings, router)

    def _router(self, resolver: Any) -> Router:
        return Router(
            resolver, port=self.settings.port, smarthost=self.settings.smarthost,
            resolver_name=(resolver_name(self.settings.resolver)
                           if self._resolver is None else ""),
        )

    def dns_lookup(self) -> Any:
        """The IDNSLookup of this host (made from default ``[dns]`` settings if none
        was handed in: resolv.conf's servers, read at the first lookup)."""
        if self._lookup is None:
            from mailhost.dns import DNSSettings, make_lookup

            self._lookup = make_lookup(DNSSettings(), reactor=self.reactor)
        return self._lookup

    def _security(self) -> TransportSecurity | None:
        s = self.settings
        if not (s.mta_sts or s.dane):
            return None
        mtasts = None
        if s.mta_sts:
            mtasts = MTASTS(self.dns_lookup(), s.mta_sts_cache_dir, self.reactor,
                            port=s.mta_sts_port, ca_file=s.mta_sts_ca_file,
                            timeout=s.mta_sts_timeout)
        return TransportSecurity(self.dns_lookup(), self.tls_reports, dane_on=s.dane,
                                 mtasts=mtasts, ca_file=s.mta_sts_ca_file)

    def startService(self) -> None:
        super().startService()
        if not self.run_scheduler:
            return
        resolver = self._resolver
        if resolver is None and self.settings.resolver != "system":
            log.warn(
                "outbound.resolver is deprecated: set dns.nameservers instead (the router "
                "then shares the [dns] resolver, whose AD bit DANE needs); routing asks "
                "{resolver} without DNSSEC for now", resolver=self.settings.resolver)
            resolver = make_resolver(self.settings.resolver, self.reactor)
        elif resolver is None:
            resolver = self.dns_lookup()
        self._resolver_in_use = resolver
        router = self._router(resolver)
        self.scheduler = Scheduler(
            self.settings,
            self.files,
            router,
            bounce=self.send_dsn,
            deliver_local=self.deliver_local,
            is_local_domain=self.directory.is_local_domain,
            reactor=self.reactor,
            local_addresses=self.local_addresses,
            attempt_observers=self.attempt_observers,
            security=self._security(),
        )
        self.queue.scheduler = self.scheduler
        self._started = defer.ensureDeferred(self.scheduler.start())
        self._started.addErrback(lambda f: log.failure("outbound queue failed to start", f))
        if self.settings.queue_backend == "postgresql":
            from mailhost.outbound.pg_queue import PgSpoolFiles, QueueLeases

            assert isinstance(self.files, PgSpoolFiles)  # make_spool's choice
            self.files.db.start()
            self.leases = QueueLeases(self.files, self.scheduler, self.reactor,
                                      poll=self.settings.queue_poll)
            self._started.addCallback(lambda _: self.leases.start())
        # The SMTP listeners start after us: learn their real addresses (tcp:0 ports
        # included) once they are bound, for MX loop detection.
        self.reactor.callLater(0, self._learn_listeners)

    def adopt_spooled(self, qid: str) -> None:
        """A message another process committed to the spool: load it and schedule it
        (if this process runs the scheduler and does not know it yet). One that is
        missed is not lost: the scheduler loads the whole spool when it starts."""
        scheduler = self.scheduler
        if scheduler is None or qid in scheduler.envelopes:
            return
        from twisted.internet import threads

        d = threads.deferToThread(self.files.load_envelope_sync, qid)

        def add(env: Any) -> None:
            if env is not None and env.id not in scheduler.envelopes:
                scheduler.add(env)

        d.addCallback(add)
        d.addErrback(lambda f: log.failure("outbound: loading {qid}", f, qid=qid))

    def _learn_listeners(self) -> None:
        wait = self._listening
        if wait is None or not self.running:
            return

        def learn(ports: dict[str, list[Any]]) -> None:
            for port in ports.get("smtp", []):
                host = port.getHost()
                if hasattr(host, "port"):
                    self.add_local_address(getattr(host, "host", ""), host.port)

        d = wait()
        d.addCallback(learn)
        d.addErrback(
            lambda f: log.info("outbound: listening addresses unknown: {e}", e=f.getErrorMessage())
        )

    def stopService(self) -> defer.Deferred:
        super().stopService()
        scheduler = self.scheduler

        async def stop() -> None:
            if self.leases is not None:
                await self.leases.stop()
            if scheduler is not None:
                await self._started
                await scheduler.stop(self.settings.shutdown_grace)
            await self._drain_spool()
            if self.leases is not None:
                await self.leases.release()
                await self.leases.files.db.close()
            await self.tls_reports.drain()

        return defer.ensureDeferred(stop())

    async def _drain_spool(self) -> None:
        """Wait (bounded) for spool writes in flight: their threads are daemons, which
        the interpreter's exit would cut off mid-operation."""
        d = self.files.drain()
        d.addTimeout(SPOOL_DRAIN_TIMEOUT, self.reactor)
        try:
            await d
        except defer.TimeoutError:
            log.warn(
                "outbound: spool writes still running after {t}s, stopping anyway",
                t=SPOOL_DRAIN_TIMEOUT,
            )

    # Bounces.

    def send_dsn(self, env: Envelope, reports: list[dsn.RecipientReport]) -> defer.Deferred:
        return defer.ensureDeferred(self._send_dsn(env, reports))

    async def _send_dsn(self, env: Envelope, reports: Sequence[dsn.RecipientReport]) -> None:
        if not env.sender:
            log.info("outbound: no DSN for {qid}: null sender", qid=env.id)
            return
        domain = env.sender.rpartition("@")[2]
        kw = dict(
            hostname=self.settings.hostname,
            sender=env.sender,
            reports=reports,
            arrival=env.arrival,
            envid=env.envid,
            ret=env.ret,
            original_path=self.files.message_path(env.id),
            original_offset=env.offset,
            now=self.reactor.seconds(),
        )
        if self.directory.is_local_domain(domain):
            users = self.directory.lookup(env.sender)
            if not users:
                log.warn(
                    "outbound: DSN for {qid} dropped: local sender {sender} has no mailbox",
                    qid=env.id,
                    sender=env.sender,
                )
                return
            target: IDeliveryTarget = MailboxTarget(self.store, "",
                                                    [DeliveryTarget(u) for u in users])
        else:
            target = QueueTarget(self.queue, "", [QueueRecipient(env.sender)])
        await deliver(target, lambda write: dsn.write_dsn(write, **kw))
        log.info(
            "outbound: DSN ({actions}) for {qid} sent to {sender}",
            actions=",".join(sorted({r.action for r in reports})),
            qid=env.id,
            sender=env.sender,
        )

    # An MX that is us, for a local domain.

    def deliver_local(self, job: Job) -> defer.Deferred:
        return defer.ensureDeferred(self._deliver_local(job))

    async def _deliver_local(self, job: Job) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        targets: list[DeliveryTarget] = []
        seen: set[str] = set()
        for r in job.recipients:
            users = self.directory.lookup(r.address)
            if not users:
                outcomes[r.address] = Outcome(PERMANENT, "550 5.1.1 no such user here")
                continue
            for u in users:
                if u not in seen:
                    seen.add(u)
                    targets.append(DeliveryTarget(u))
        if targets:
            # MessageFile: never another message's bytes if this one is deleted meanwhile.
            reader = await open_message_reader(job.path, job.envelope.offset,
                                               job.envelope.size)

            async def copy(write: Callable[[bytes], None]) -> None:
                while chunk := await reader.read():
                    write(chunk)

            try:
                await deliver(MailboxTarget(self.store, job.envelope.sender, targets), copy)
            finally:
                reader.close()
            for r in job.recipients:
                outcomes.setdefault(r.address, Outcome(DELIVERED, "250 2.0.0 delivered locally"))
        return outcomes
