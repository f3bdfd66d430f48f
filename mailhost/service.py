"""The one composition root: ``makeService(config)`` builds the whole mail host.

It turns a ``Config`` into a ``MultiService`` of listeners (each a Twisted endpoint
string) and the outbound queue runner, wiring every protocol to the same store,
directory and ``LoginService``. The twistd plugin and embedders both call it; an
embedder can pass its own store, checkers or realm to plug in other backends.
"""

from __future__ import annotations

import copy
import os
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.application import service
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, threads
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory, IReactorFromThreads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from mailhost.auth.aliases import AliasesFile
from mailhost.auth.checkers import PasswdFileChecker
from mailhost.auth.directory import IUserDirectory, UserDirectory
from mailhost.auth.hashing import VerificationCache, hash_password
from mailhost.auth.login import LoginService
from mailhost.auth.passwd import PasswdEntry, PasswdFile
from mailhost.auth.quota_limits import limits as quota_limits
from mailhost.auth.realm import MailRealm
from mailhost.auth.users import directory_among, users_of
from mailhost.config import Config, ConfigError, as_dict, load, store_modes
from mailhost.diskspace import FreeSpace, check_writable
from mailhost.limits import ConnectionLimits, chain
from mailhost.outbound.interfaces import IOutboundQueue
from mailhost.sessions import IDispatchHook, SessionRegistry
from mailhost.settings import Settings
from mailhost.store.interfaces import IMailStore
from mailhost.store.quota import IQuotaStore
from mailhost.tls import HandshakeDeadlineFactory, server_options
from mailhost.web.interfaces import IFaultControl, IQueueListing
from mailhost.web.settings import WebSettings

log = Logger()


def make_store(config: Config, shared: bool = False) -> IMailStore:
    """The configured store backend; ``shared``: other workers of this server use it
    at the same time (``server.workers``)."""
    if config.store.backend == "memory":
        from mailhost.store.memory import MemoryStore

        return MemoryStore()
    if config.store.backend == "postgresql":
        from mailhost.store.postgresql.startup import open_store

        return open_store(config.store.dsn)
    from mailhost.store.maildir import MaildirStore
    from mailhost.store.modes import FileModes
    from mailhost.store.modseq import time_clock

    file_mode, dir_mode, group = store_modes(config.store)
    return MaildirStore(config.data_path(config.store.path), fsync=config.store.fsync,
                        modes=FileModes(file_mode, dir_mode, group),
                        watch=config.store.watch, modseq_clock=time_clock if shared else None)


class PostmasterBootstrap(service.Service):
    """On first start with an empty passwd file, create postmaster@<first domain>.

    The random password is logged once, so a newcomer can log in at once.
    """

    def __init__(self, passwd: PasswdFile, domain: str) -> None:
        self.passwd = passwd
        self.domain = domain

    def startService(self) -> None:
        super().startService()
        if self.passwd.entries():
            return
        user = f"postmaster@{self.domain}"
        password = secrets.token_urlsafe(12)
        self.passwd.save({user: PasswdEntry(user, hash_password(password))})
        log.warn(
            "created {user} with password {password} (shown once; change it with "
            "'mailhost user passwd {user}')",
            user=user, password=password, event="postmaster_created",
        )


class ListenError(Exception):
    """A listener could not bind; the message is one line naming the key, the endpoint
    and the reason (``smtp.listen tcp:2525:interface=127.0.0.1: cannot listen:
    Address already in use``)."""


class ListenerService(service.Service):
    """One listening endpoint of the mail host.

    Our own instead of Twisted's ``StreamServerEndpointService``, whose synchronous
    failure and port Deferred are private attributes. It binds in
    ``privilegedStartService`` (before twistd's ``--uid`` drops root), or in
    ``startService`` for embedders that call only that. A failure the endpoint reports
    at once (every TCP, TLS, UNIX and systemd endpoint does) is raised as
    ``ListenError``; one reported later is logged in one line and given to
    ``when_listening``.
    """

    def __init__(self, key: str, description: str, endpoint: Any,
                 factory: IProtocolFactory) -> None:
        self.key = key
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port: Any = None
        self.error: ListenError | None = None
        self.started = False
        self._pending: defer.Deferred | None = None
        self._waiters: list[defer.Deferred] = []
        # True while _listen can still raise the error itself.
        self._reported_by_raise = True

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self.started:
            return
        self.started = True
        self._pending = self.endpoint.listen(self.factory)
        self._pending.addCallbacks(self._bound, self._failed)
        if self.error is not None:
            raise self.error
        self._reported_by_raise = False

    def _bound(self, port: Any) -> None:
        self._pending = None
        self.port = port
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(port)

    def _failed(self, failure: Any) -> None:
        self._pending = None
        error = failure.value
        if isinstance(error, defer.CancelledError):  # stopped before it was bound
            return
        reason = str(error)
        if isinstance(error, CannotListenError) and isinstance(error.socketError, OSError):
            reason = error.socketError.strerror or str(error.socketError)
        self.error = ListenError(f"{self.key} {self.description}: cannot listen: {reason}")
        if not self._reported_by_raise:
            log.error("{error}", error=str(self.error), event="listen_failed")
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(self.error)

    def when_listening(self) -> defer.Deferred:
        """Deferred firing with the ``IListeningPort`` once bound (or ``ListenError``)."""
        if self.port is not None:
            return defer.succeed(self.port)
        if self.error is not None:
            return defer.fail(self.error)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        return d

    def stopService(self) -> Any:
        super().stopService()
        if self._pending is not None:
            self._pending.cancel()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class MailHostService(service.MultiService):
    """The running mail host; the public pieces are attributes for embedders and tests."""

    def __init__(self, config: Config, store: IMailStore, directory: IUserDirectory,
                 login: LoginService, settings: Settings | None = None) -> None:
        super().__init__()
        self.config = config
        self.settings = settings if settings is not None else Settings.from_config(config)
        self.store = store
        self.directory = directory
        self.login = login
        # The directory makeService built from the config (not one passed in): a
        # reload hands it the new domains and postmaster.
        self.own_directory: UserDirectory | None = None
        # The protocol factories by kind, as built (before any wrapping): a reload
        # hands them new settings.
        self.factories: dict[str, list[Any]] = {}
        self.queue: Any = None
        self.outbound: Any = None
        self.metrics: Any = None
        # The operator's view over every mailbox (mailhost.mailview.IMailView), or None
        # when the store cannot list its accounts (IAccountListing).
        self.mail_view: Any = None
        # Every live session of this host (mailhost.sessions): drain, metrics, faults.
        self.sessions: SessionRegistry | None = None
        # twistd sets this; an embedding application keeps SIGHUP for itself.
        self.handle_sighup = False
        self._previous_sighup: Any = None
        # twistd sets this: a listener that cannot bind ends the process in one line.
        self.exit_on_listen_error = False
        self.listeners: dict[str, list[ListenerService]] = {}
        # (kind, factory) -> factory: wraps every listener's factory (limits, fault
        # injection in mailhost.testing).
        self.wrap_factory: Callable[[str, IProtocolFactory], IProtocolFactory] | None = None
        # A worker of ``server.workers > 1`` (mailhost.workers): its listeners adopt
        # the sockets the supervisor bound, ``listen_key`` -> (fd, address family).
        self.inherited: dict[str, tuple[int, int]] = {}

    def endpoint(self, reactor: Any, description: str, key: str) -> Any:
        """The endpoint of a listener: the inherited socket in a worker, else parsed."""
        inherited = self.inherited.get(f"{key} {description}")
        if inherited is not None:
            from mailhost.workers.shared import AdoptedEndpoint

            return AdoptedEndpoint(reactor, *inherited)
        return parse_endpoint(reactor, description, key)

    def add_listener(self, kind: str, description: str, factory: IProtocolFactory,
                     reactor: Any, implicit_tls: Any = None) -> ListenerService:
        """Listen on an endpoint string. ``wrap_factory`` wraps the protocol factory
        (so wrappers see plaintext), then ``implicit_tls`` options, if any, wrap it in TLS."""
        if self.wrap_factory is not None:
            factory = self.wrap_factory(kind, factory)
        if implicit_tls is not None:
            factory = HandshakeDeadlineFactory(implicit_tls, factory,
                                               self.config.tls.handshake_timeout, reactor)
        key = f"{kind}.listen_tls" if implicit_tls is not None else f"{kind}.listen"
        endpoint = self.endpoint(reactor, description, key)
        svc = ListenerService(key, description, endpoint, factory)
        svc.setName(f"{kind}{'+tls' if implicit_tls is not None else ''}:{description}")
        svc.setServiceParent(self)
        self.listeners.setdefault(kind, []).append(svc)
        return svc

    def wait_listening(self) -> defer.Deferred:
        """Deferred firing, once every listener is bound, with ``{kind: [IListeningPort]}``.

        Call after ``startService``; with ``tcp:0`` endpoints this is how callers learn
        the ephemeral ports.
        """
        kinds = [(kind, svc) for kind, svcs in self.listeners.items() for svc in svcs]
        if any(not svc.started for _, svc in kinds):
            return defer.fail(RuntimeError("listeners are not started"))
        waiting = [svc.when_listening() for _, svc in kinds]

        def collect(ports: list) -> dict[str, list]:
            out: dict[str, list] = {}
            for (kind, _), port in zip(kinds, ports, strict=True):
                out.setdefault(kind, []).append(port)
            return out

        return defer.gatherResults(waiting, consumeErrors=True).addCallback(collect)

    def privilegedStartService(self) -> None:
        """twistd binds the listeners here, before it drops privileges (``--uid``)."""
        try:
            super().privilegedStartService()
        except ListenError as e:
            self._listen_failed(e)
            raise

    def _listen_failed(self, error: ListenError) -> None:
        """Under twistd, a listener that cannot bind (the port is taken: a second start)
        stops the start with one line in the log and exit status 1, not a traceback."""
        if not self.exit_on_listen_error:
            return
        log.critical("{error}; not starting", error=str(error), event="listen_failed")
        raise SystemExit(1) from None

    def startService(self) -> None:
        started = self.store.start()  # crash leftovers settle now; accounts wait for it
        started.addErrback(lambda f: log.failure("store start failed", f, event="store_start"))
        try:
            super().startService()
        except ListenError as e:
            self._listen_failed(e)
            raise
        if self.handle_sighup:
            import signal

            from twisted.internet import reactor

            from_thread = cast(IReactorFromThreads, reactor)
            self._previous_sighup = signal.signal(
                signal.SIGHUP, lambda *_: from_thread.callFromThread(self.reload))

    def reload(self) -> tuple[list[str], list[str]]:
        """Re-read the config file (SIGHUP): apply what can change live, log the rest.

        The running config is never changed: the keys that can change live are taken
        from the file into a new ``Config`` (the others keep their running values),
        new frozen settings are made from it, and each part is handed its own
        (``_use_settings``). The passwd and aliases files need no reload: they are
        re-read whenever they change.
        """
        if not self.config.source:
            log.warn("reload: no config file to re-read", event="reload")
            return [], []
        try:
            new = load(self.config.source, self.config.overrides)
        except ConfigError as e:
            log.error("reload failed, keeping the running config: {error}", error=str(e),
                      event="reload")
            return [], []
        applied, restart = [], []
        effective = copy.deepcopy(self.config)
        for section, values in as_dict(new).items():
            running = getattr(effective, section)
            for key, value in values.items():
                if getattr(running, key) == value:
                    continue
                name = f"{section}.{key}"
                if needs_restart(name):
                    restart.append(name)
                else:
                    setattr(running, key, getattr(getattr(new, section), key))
                    applied.append(name)
        self.config = effective
        self._use_settings(Settings.from_config(effective))
        log.info("reloaded {config}: applied {applied}; needs a restart: {restart}",
                 config=self.config.source, applied=applied or "nothing",
                 restart=restart or "nothing", event="reload")
        return applied, restart

    def _use_settings(self, settings: Settings) -> None:
        """Hand each part its new settings; sessions that start later use them."""
        self.settings = settings
        for kind, factories in self.factories.items():
            part = {"smtp": settings.smtp, "submission": settings.smtp,
                    "pop3": settings.pop3, "imap": settings.imap}[kind]
            for factory in factories:
                factory.settings = part
        if self.own_directory is not None:
            self.own_directory.use_settings(settings.directory)
        self.login.use_settings(settings.auth)
        if self.outbound is not None:
            self.outbound.use_settings(settings.outbound)

    def stopService(self) -> defer.Deferred:
        """Graceful stop: no new connections, drain sessions (see mailhost.sessions),
        then the queue runner and the store."""
        if self._previous_sighup is not None:
            import signal

            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        listeners = [svc for svcs in self.listeners.values() for svc in svcs]
        d = defer.gatherResults([defer.maybeDeferred(svc.stopService) for svc in listeners])
        sessions = self.sessions
        if sessions is not None:
            d.addCallback(lambda _: sessions.drain(self.config.server.shutdown_grace))
        d.addCallback(lambda _: super(MailHostService, self).stopService())
        if self.mail_view is not None:
            d.addCallback(lambda _: self.mail_view.close())
        d.addCallback(lambda _: self.store.close())
        return d


def makeService(
    config: Config,
    *,
    store: IMailStore | None = None,
    checkers: Sequence[ICredentialsChecker] | None = None,
    realm: IRealm | None = None,
    directory: IUserDirectory | None = None,
    wrap_factory: Callable[[str, IProtocolFactory], IProtocolFactory] | None = None,
    queue: IOutboundQueue | None = None,
    relay: bool = True,
    dispatch_hook: IDispatchHook | None = None,
    faults: IFaultControl | None = None,
    queue_listing: IQueueListing | None = None,
    reactor: Any = None,
    worker: Any = None,
) -> MailHostService:
    """Build the mail host described by ``config``.

    ``store``, ``checkers``, ``realm`` and ``directory`` replace the defaults (the
    configured store, the passwd file, ``MailRealm`` and the passwd/aliases directory).
    Without ``directory``, the checkers say who receives mail too (one user source,
    ``mailhost.auth.users``): a checker that is an ``IUserDirectory`` is the directory,
    else the users of the checkers' ``IUserSource`` (or Twisted's in-memory and file
    checkers) with the aliases file; ``NoUserSource`` (a ValueError) if none has users.
    ``wrap_factory(kind, factory)`` may wrap each listener's protocol factory; ``kind``
    is "smtp", "submission", "pop3" or "imap". ``queue`` (an ``IOutboundQueue``)
    takes the mail SMTP accepts for remote domains instead of the spool;
    ``relay=False`` gives SMTP no queue at all, so remote recipients are refused
    (``554 5.7.1``). ``dispatch_hook`` (an ``IDispatchHook``) is asked before every
    session command runs (``mailhost.testing`` injects faults so). ``faults`` and
    ``queue_listing`` are what the web UI (``[web]``) shows and scripts: the test host
    passes its fault script and captured queue; by default it lists the spool, and
    ``web.faults`` gives a standalone server a fault script of its own. ``worker`` (a
    ``mailhost.workers.WorkerContext``) builds one worker of ``server.workers > 1``:
    inherited listeners, and the limits, throttle and locks shared across workers.

    This is the one place that builds the graph: every part gets its frozen settings
    (``mailhost.settings``) and the collaborators it needs.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    settings = Settings.from_config(config)
    # outbound.enabled = false: no spool, no relay client, no resolver (remote mail is
    # refused unless the embedder's own queue= takes it).
    # Capture mode (mailhost.auth.capture) has no outbound either: nothing leaves.
    outbound_on = config.outbound.enabled and not settings.capture.enabled
    # What mail is written to; a read-only one stops the start here, in one line. A
    # memory store with its own checkers and no outbound writes nothing to disk.
    on_disk = [path for path, used in (
        (config.data_path(config.outbound.queue_dir), outbound_on),
        (config.data_path(config.store.path), store is None and config.store.backend == "maildir"),
    ) if used]
    storage_paths: list[str] = []
    if on_disk or checkers is None:  # the passwd file lives in data_dir
        storage_paths = [config.server.data_dir, *on_disk]
        os.makedirs(os.path.abspath(config.server.data_dir), exist_ok=True)
        check_writable(storage_paths)
    store = store if store is not None else make_store(config, shared=worker is not None)

    if config.auth.backend == "postgresql":  # the users table, shared by every node
        from mailhost.auth.pg_users import make_users

        passwd: PasswdFile = make_users(config.auth.dsn or config.store.dsn)
    else:
        passwd = PasswdFile(config.data_path(config.auth.passwd_file), reactor=reactor)
    # The lists and catch-alls: the aliases file, or with the users in PostgreSQL the
    # aliases table every node shares (mailhost alias; heard of by NOTIFY).
    aliases: Any = AliasesFile(config.data_path(config.auth.aliases_file), reactor=reactor)
    if config.auth.backend == "postgresql":
        from mailhost.auth.pg_aliases import make_aliases

        if aliases.table():
            log.warn("{path}: not read with auth.backend = \"postgresql\" (the aliases "
                     "table is); 'mailhost alias import' copies it there", path=aliases.path)
        aliases = make_aliases(config.auth.dsn or config.store.dsn)
    capture = settings.capture.enabled
    if capture:
        # Capture mode (mailhost.auth.capture): every address is a local mailbox and
        # any login succeeds; nothing below relays, queues or looks names up.
        from mailhost.auth.capture import AcceptAnyChecker, CaptureDirectory

        relay = False
        if directory is None:
            directory = CaptureDirectory(settings.directory.domains)
        if checkers is None:
            checkers = [AcceptAnyChecker(settings.directory.domains[0])]
    if checkers is None:
        # Two argon2 checks at a time at most: bounded memory and CPU under a login flood.
        auth_pool = ThreadPool(minthreads=0, maxthreads=2, name="mailhost-auth")
        checkers = [PasswdFileChecker(passwd, VerificationCache(config.auth.cache_ttl),
                                      threadpool=auth_pool, reactor=reactor)]
    else:
        auth_pool = None
    # One user source for login and delivery (mailhost.auth.users): unless the
    # embedder passes a directory, a checker that is one decides delivery, else the
    # checkers' users (and the aliases file) do.
    own_directory = None
    if directory is None:
        directory = directory_among(checkers)
    if directory is None:
        directory = own_directory = UserDirectory(
            settings.directory.domains,
            users_of(checkers),
            aliases.table,
            postmaster=settings.directory.postmaster,
        )
    portal = Portal(realm if realm is not None else MailRealm(store), checkers)
    login = LoginService.from_settings(portal, settings.auth, reactor=reactor)

    channel = worker.channel if worker is not None else None
    if channel is not None:
        from mailhost.workers.shared import SharedThrottle

        login.throttle = SharedThrottle.adopt(login.throttle, channel)
    root = MailHostService(config, store, directory, login, settings)
    if worker is not None:
        root.inherited = dict(worker.fds)
    if IQuotaStore.providedBy(store):  # limits: passwd quota=, else store.default_quota
        store.set_quota_limits(quota_limits(passwd, lambda: root.config.store.default_quota))
    root.own_directory = own_directory
    root.mail_view = _make_mail_view(store, config, reactor)
    if auth_pool is not None:
        ThreadPoolService(auth_pool).setServiceParent(root)
    if config.auth.backend == "postgresql":  # other nodes' user changes reach this one
        from mailhost.auth.pg_users import PostgresUsers
        from mailhost.db.notify import ListeningService

        assert isinstance(passwd, PostgresUsers)
        users = passwd
        ListeningService(lambda: users.start_listening(reactor),
                         users.stop_listening).setServiceParent(root)
        ListeningService(lambda: aliases.start_listening(reactor),
                         aliases.stop_listening).setServiceParent(root)
    limits = ConnectionLimits.from_settings(settings.limits, reactor=reactor)
    if channel is not None:
        from mailhost.workers.shared import SharedConnectionLimiter

        limits.limiter = SharedConnectionLimiter.adopt(limits.limiter, channel)
    web = WebSettings.from_config(config)
    if web.enabled and web.faults and dispatch_hook is None:
        # A standalone dev server scripts its faults from the page (Mailpit's chaos).
        from mailhost.testing.faults import FaultHook
        from mailhost.testing.faults.control import FaultScript

        script: list[Any] = []
        dispatch_hook, faults = FaultHook(script, reactor), FaultScript(script)
    # One registry per host, handed to every protocol factory below.
    sessions = root.sessions = SessionRegistry(reactor, hook=dispatch_hook)
    # Outermost first: limits refuse before anything else runs; the embedder's
    # wrapper sits closest to the protocol.
    root.wrap_factory = chain(limits.wrap, wrap_factory)
    if (config.auth.create_postmaster and any(isinstance(c, PasswdFileChecker) for c in checkers)
            and (worker is None or worker.index == 0)):  # one postmaster, not one per worker
        PostmasterBootstrap(passwd, config.server.domains[0]).setServiceParent(root)

    tls_options = server_options(config.tls)

    # One [dns] lookup, so one TTL cache, for everything that asks DNS: routing (MX/A/AAAA
    # with the AD bit, for DANE), the pipeline (SPF, DKIM, DMARC, ARC) and the envelope
    # checks (FCrDNS, DNSBL). Nothing is read or opened before its first lookup.
    from mailhost.dns import DNSSettings, make_lookup

    lookup = make_lookup(DNSSettings.from_config(config), reactor=reactor)
    if outbound_on:
        from mailhost.outbound.service import OutboundService, listen_addresses

        outbound = OutboundService(settings.outbound, store, directory, reactor=reactor,
                                   local_addresses=listen_addresses(config.smtp.listen),
                                   listening=root.wait_listening, lookup=lookup,
                                   run_scheduler=(worker is None or worker.owns_scheduler
                                                  or config.queue.backend == "postgresql"),
                                   worker=None if worker is None else worker.index)
        # The spool: one scheduler (worker 0), every worker spools and tells it. The
        # PostgreSQL queue: every worker claims and delivers, as a node of its own.
        if channel is not None and config.queue.backend != "postgresql":
            outbound.queue.on_spooled = lambda qid: channel.publish("spool.new", qid)
            channel.on("spool.new", lambda _src, qid: outbound.adopt_spooled(qid))
        outbound.setServiceParent(root)
        root.outbound = outbound
        root.queue = outbound.queue
    smtp_queue = None if not relay else queue if queue is not None else root.queue
    if config.metrics.listen:
        from mailhost.metrics import Metrics

        # The shared queue's gauges from one worker only: the supervisor sums workers.
        shared = worker is None or worker.index == 0
        root.metrics = Metrics(queue_stats=lambda: _queue_stats(root.outbound, shared),
                               queue_held=lambda: _queue_held(root.outbound))
        sessions.observers.append(root.metrics)
        login.observers.append(root.metrics.login)
        if root.outbound is not None:
            root.outbound.attempt_observers.append(root.metrics.attempt)
            root.outbound.tls_reports.observers.append(root.metrics.tls_result)
        metrics_service = MetricsService(root.metrics, config.metrics.listen, reactor)
        if worker is not None:  # a worker's own page, which the supervisor merges
            from mailhost.workers.metrics import worker_resource

            metrics_service.endpoint = worker.metrics_endpoint(reactor, config.data_path("run"))
            metrics_service.resource = worker_resource(root.metrics)
        metrics_service.setServiceParent(root)

    if web.enabled:
        _add_web(root, web, reactor, faults=faults if web.faults else None,
                 queue_listing=queue_listing)

    # root.config: a reload replaces it, so a new smtp.min_free_space applies.
    space = FreeSpace(storage_paths, lambda: root.config.smtp.min_free_space, reactor=reactor)
    space.setServiceParent(root)

    # Capture mode checks nothing (no DNS, no greylisting of the app under test).
    pipeline = None if capture else _make_pipeline(config, reactor, lookup)
    checks = None if capture else _make_checks(config, reactor, passwd, root, lookup)
    if channel is not None and checks is not None:
        from mailhost.abuse.ratelimit import RateLimitCheck
        from mailhost.workers.shared import SharedRateLimiter

        for check in checks.checks:
            if isinstance(check, RateLimitCheck):
                check.limiter = SharedRateLimiter.adopt(check.limiter, channel)
    if checks is not None and pipeline is not None:  # milters answer at MAIL and RCPT too
        checks = checks.joined(pipeline.stages)
    from mailhost.smtp.factory import SMTPFactory
    from mailhost.smtp.policy import RecipientPolicy

    try:
        policy = RecipientPolicy(directory, settings.relay.relay_networks,
                                 can_queue=smtp_queue is not None,
                                 default_domain=settings.relay.default_domain)
    except ValueError as e:
        raise ConfigError(f"smtp.relay_networks: {e}") from None
    url_fetcher = _url_fetcher(store, settings.imap)  # URLFETCH and BURL (RFC 4467, 4468)
    for submission, section in ((False, config.smtp), (True, config.submission)):
        kind = "submission" if submission else "smtp"
        for description, wrap in _listen_specs(section):
            factory = SMTPFactory(settings.smtp, store, directory, login, policy,
                                  queue=smtp_queue, submission=submission,
                                  tls_options=None if wrap else tls_options, reactor=reactor,
                                  sessions=sessions, space=space, pipeline=pipeline,
                                  checks=checks, url_fetcher=url_fetcher if submission else None)
            root.factories.setdefault(kind, []).append(factory)
            root.add_listener(kind, description, factory, reactor,
                              implicit_tls=tls_options if wrap else None)

    from mailhost.pop3 import MaildropLocks
    from mailhost.pop3.factory import POP3Factory

    pop3_locks = MaildropLocks()  # one lock set: 110 and 995 guard the same maildrops
    if worker is not None:  # ... and every worker's sessions: a lock file per user
        from mailhost.pop3 import FileMaildropLocks

        pop3_locks = FileMaildropLocks(config.data_path("pop3-locks"))
    for description, wrap in _listen_specs(config.pop3):
        pop3 = POP3Factory(settings.pop3, login, tls_options=None if wrap else tls_options,
                           reactor=reactor, locks=pop3_locks, sessions=sessions)
        root.factories.setdefault("pop3", []).append(pop3)
        root.add_listener("pop3", description, pop3, reactor,
                          implicit_tls=tls_options if wrap else None)

    from mailhost.imap.factory import IMAPFactory

    for description, wrap in _listen_specs(config.imap):
        imap = IMAPFactory(settings.imap, login, tls_options=None if wrap else tls_options,
                           reactor=reactor, sessions=sessions, url_fetcher=url_fetcher)
        root.factories.setdefault("imap", []).append(imap)
        root.add_listener("imap", description, imap, reactor,
                          implicit_tls=tls_options if wrap else None)
    return root


def _url_fetcher(store: IMailStore, imap: Any) -> Any:
    """The one ``mailhost.urlfetch.IUrlFetcher`` of the host: IMAP's URLFETCH and the
    submission listeners' BURL resolve URLAUTH URLs through it (None without
    ``imap.urlauth_dir``: no URLAUTH, no BURL)."""
    if not imap.urlauth_dir:
        return None
    from mailhost.imap.catenate import open_url
    from mailhost.urlfetch.fetcher import UrlAuthFetcher

    return UrlAuthFetcher(store.open_account, imap.urlauth_dir, open_url)


def _make_mail_view(store: IMailStore, config: Config, reactor: Any) -> Any:
    """The operator's view over ``store`` (test host helpers, capture mode, web UI)."""
    from mailhost.mailview import StoreMailView
    from mailhost.store.interfaces import IAccountListing

    if not IAccountListing.providedBy(store):
        return None
    return StoreMailView(store, hostname=config.server.hostname, reactor=reactor)


def _add_web(root: MailHostService, settings: WebSettings, reactor: Any,
             faults: IFaultControl | None, queue_listing: IQueueListing | None) -> None:
    """The web UI and REST API on ``web.listen``: its listener is one of the root's
    (``wait_listening`` reports it as "web"), outside the mail connection limits."""
    from mailhost.web.queue import SpoolListing
    from mailhost.web.service import WebService

    if root.mail_view is None:
        raise ConfigError("web.listen: this store cannot list its accounts, so it has no web UI")
    if queue_listing is None and root.outbound is not None:
        queue_listing = SpoolListing(root.outbound)  # capture mode has none: empty
    web = WebService(settings, root.mail_view, reactor, queue=queue_listing, faults=faults)
    web.setServiceParent(root)
    endpoint = root.endpoint(reactor, settings.listen, "web.listen")
    listener = ListenerService("web.listen", settings.listen, endpoint, web.factory)
    listener.setName(f"web:{settings.listen}")
    listener.setServiceParent(root)
    root.listeners.setdefault("web", []).append(listener)


def _make_pipeline(config: Config, reactor: Any, lookup: Any) -> Any:
    """The message pipeline of ``[pipeline]``, over the ``[dns]`` lookup."""
    from mailhost.pipeline import PipelineConfigError, PipelineSettings, build_pipeline

    try:
        settings = PipelineSettings.from_config(config)
        if not settings.stages:
            return None
        return build_pipeline(settings, lookup, reactor=reactor)
    except PipelineConfigError as e:
        raise ConfigError(str(e)) from None


def _make_checks(config: Config, reactor: Any, passwd: PasswdFile,
                 root: MailHostService, lookup: Any) -> Any:
    """The envelope checks (``mailhost.abuse``: FCrDNS, DNSBL, rate limits,
    greylisting) over the ``[dns]`` lookup; their services join ``root``."""
    from mailhost.abuse import AbuseConfigError, AbuseSettings, build_checks
    from mailhost.abuse.ratelimit import passwd_fields

    settings = AbuseSettings.from_config(config)
    try:
        checks, services = build_checks(settings, lookup if settings.needs_dns else None,
                                        fields=passwd_fields(passwd),
                                        reactor=reactor)
    except AbuseConfigError as e:
        raise ConfigError(str(e)) from None
    for svc in services:
        svc.setServiceParent(root)
    return checks


class ThreadPoolService(service.Service):
    """Starts and stops a private thread pool with the mail host."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Any:
        super().stopService()
        return threads.deferToThread(self.pool.stop)


class MetricsService(service.Service):
    """Serves ``/metrics`` on an endpoint (the feeds are wired in ``makeService``)."""

    def __init__(self, metrics: Any, description: str, reactor: Any) -> None:
        self.metrics = metrics
        self.description = description
        self.reactor = reactor
        # A worker of server.workers serves its page elsewhere (mailhost.workers.metrics).
        self.endpoint: Any = None
        self.resource: Any = None
        self.port: Any = None

    def startService(self) -> defer.Deferred:
        from twisted.web.server import Site

        super().startService()
        site = Site(self.resource or self.metrics.resource())
        site.noisy = False
        endpoint = self.endpoint or parse_endpoint(self.reactor, self.description,
                                                   "metrics.listen")
        d = endpoint.listen(site)

        def listening(port: Any) -> None:
            self.port = port

        return d.addCallback(listening)

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()
        return None


# Keys whose new value only a restart can apply (listeners, files opened at start).
# smtp.relay_networks and the connection limits are parsed once into their policy
# objects (RecipientPolicy, ConnectionLimits), so they are restart-only too.
_RESTART_KEYS = ("server.data_dir", "server.workers", "server.log_format", "server.log_max_bytes",
                 "server.log_max_files", "server.hostname", "metrics.listen",
                 "outbound.enabled", "outbound.queue_dir", "outbound.resolver",
                 "outbound.mta_sts", "outbound.dane", "outbound.mta_sts_ca_file",
                 "outbound.mta_sts_port", "outbound.mta_sts_timeout",
                 "auth.passwd_file", "auth.backend", "auth.dsn",
                 "auth.aliases_file", "auth.cache_ttl", "limits.", "smtp.relay_networks",
                 "pipeline.", "dnsbl.", "greylist.", "ratelimit.", "smtp.fcrdns",
                 "capture.", "web.", "queue.")
_RESTART_SUFFIXES = (".listen", ".listen_tls", ".max_connections", ".max_connections_per_ip")


def needs_restart(name: str) -> bool:
    """True if config key ``section.key`` cannot change in a running server."""
    if name == "store.default_quota":  # read at each quota check (quota_limits)
        return False
    return (name.startswith(("store.", "tls.")) or name.endswith(_RESTART_SUFFIXES)
            or any(name == k or (k.endswith(".") and name.startswith(k))
                   for k in _RESTART_KEYS))


def _queue_stats(outbound: Any, shared: bool = True) -> tuple[int, float]:
    """(queued messages, age of the oldest in seconds) for the metrics gauges: what the
    scheduler holds, or with the PostgreSQL queue the whole shared queue, as last
    counted (reported by one worker of ``server.workers``, ``shared``)."""
    leases = getattr(outbound, "leases", None)
    if leases is not None:
        if not shared or leases.shared is None:
            return 0, 0.0
        count, oldest = leases.shared
        return count, 0.0 if oldest is None else max(0.0, time.time() - oldest)
    scheduler = getattr(outbound, "scheduler", None)
    envelopes = list(getattr(scheduler, "envelopes", {}).values())
    if not envelopes:
        return 0, 0.0
    oldest = min(env.arrival for env in envelopes)
    return len(envelopes), max(0.0, time.time() - oldest)


def _queue_held(outbound: Any) -> int:
    """Queued messages this process's scheduler holds (claimed, with PostgreSQL)."""
    return len(getattr(getattr(outbound, "scheduler", None), "envelopes", {}))


def parse_endpoint(reactor: Any, description: str, key: str) -> Any:
    """serverFromString, with a one-line ConfigError naming the key on a bad string."""
    try:
        return serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{key}: bad endpoint {description!r}: {e}") from None


def _listen_specs(section: Any) -> list[tuple[str, bool]]:
    """(endpoint description, wrap in implicit TLS) for a protocol section."""
    return [(d, False) for d in section.listen] + [(d, True) for d in section.listen_tls]
