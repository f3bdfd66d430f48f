"""The queue runner: when each recipient is tried, over which connection, and what then.

Retry policy, per recipient: ``delay = min(retry_initial * 2**(attempts-1), retry_max)``,
with one last try at ``arrival + lifetime``; then the recipient bounces.

Pending recipients are grouped by destination domain: a *job* is one message's
recipients in one domain (one SMTP transaction). A *session* resolves the domain's
route and opens one connection that carries job after job for that domain. Limits:
``max_concurrency`` sessions in all, ``max_per_domain`` per domain. Temporary results
(4xx, connection and TLS failures, DNS SERVFAIL/timeouts) reschedule the recipient;
permanent ones (5xx, NXDOMAIN, null MX, routing loops, too many hops) fail it at
once. The envelope on disk is updated after every job result, before any DSN is
sent, so a crash repeats at most the delivery that was in flight.

Backoff that no number of sessions can bypass (issue 21): a session that fails before
MAIL counts as one failure of its destination, records an attempt against every
message due there, and holds the destination off; one session at a time probes it
until one delivers; new connections to a host are rate-limited (destinations.py). The
lifetime is enforced by the clock: a recipient still pending ``EXPIRY_GRACE`` after
``arrival + lifetime`` (its last try never happened) fails with a DSN, attempt or not.

Kept apart: the retry formula and outcome bookkeeping (retry.py), which DSNs are due
(dsn_due.py), each connection's policy, endpoint and TLS contexts
(connection_plan.py), idle connections kept for their domain (idle_connections.py).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mailhost.outbound import connection_plan, dsn
from mailhost.outbound.client import RelayClient, run_session
from mailhost.outbound.client_policy import ClientPolicy
from mailhost.outbound.connection_plan import TLSContexts, configured_tls
from mailhost.outbound.destinations import Destinations
from mailhost.outbound.dsn_due import reports_due
from mailhost.outbound.envelope import FAILED, PENDING, Envelope
from mailhost.outbound.idle_connections import IdleConnections
from mailhost.outbound.jobs import PERMANENT, TEMPORARY, Job, Outcome, SessionResult
from mailhost.outbound.retry import EXPIRY_GRACE, age, record_outcome
from mailhost.outbound.routing import Hop, Router, RoutingError
from mailhost.outbound.security import HopPlan, TransportSecurity
from mailhost.outbound.spool import SpoolFiles
from mailhost.settings import OutboundSettings

log = Logger()

Key = tuple[str, str]  # (queue id, domain)

# Callables the service provides.
BounceFn = Callable[[Envelope, list[dsn.RecipientReport]], defer.Deferred]
LocalFn = Callable[[Job], defer.Deferred]  # fires with {address: Outcome}


class _DomainSource:
    """The JobSource one session pulls from."""

    def __init__(self, scheduler: Scheduler, domain: str) -> None:
        self.scheduler = scheduler
        self.domain = domain

    def next_job(self) -> Job | None:
        return self.scheduler._next_job(self.domain)

    def job_done(self, job: Job, outcomes: dict[str, Outcome], info: dict[str, Any]) -> None:
        self.scheduler._job_done(job, outcomes, info)

    def wait_job(self, timeout: float) -> defer.Deferred:
        return self.scheduler._wait_job(self.domain, timeout)


class Scheduler:
    """Runs the queue; see the module docstring. Timers start in ``start``.

    ``settings`` are read at the moment of use, so a reload that hands over new ones
    (``use_settings``) applies to the next decision without a restart.
    """

    def __init__(
        self,
        settings: OutboundSettings,
        files: SpoolFiles,
        router: Router,
        bounce: BounceFn,
        deliver_local: LocalFn,
        is_local_domain: Callable[[str], bool],
        reactor: Any,
        local_addresses: Iterable[tuple[str, int]] = (),
        attempt_observers: list[Callable[[list[str]], None]] | None = None,
        security: TransportSecurity | None = None,
    ) -> None:
        self.settings = settings
        # DANE and MTA-STS (None: the configured tls_policy alone).
        self.security = security
        # Told of each attempt's ``addr=kind:reply`` results (the host's metrics).
        self.attempt_observers = attempt_observers if attempt_observers is not None else []
        self.files = files
        self.router = router
        self.bounce = bounce
        self.deliver_local = deliver_local
        self.is_local_domain = is_local_domain
        self.reactor = reactor
        self.local_addresses: set[tuple[str, int]] = set(local_addresses)
        self.envelopes: dict[str, Envelope] = {}
        self.deleted: set[str] = set()
        self.ready: dict[str, deque[str]] = {}
        self.ready_keys: set[Key] = set()
        self.inflight: set[Key] = set()
        self.heap: list[tuple[float, int, str, str]] = []
        self._seq = 0
        self.sessions: dict[str, int] = {}
        self.total_sessions = 0
        self.running = False
        self.stopping = False
        # True while this node cannot confirm it still owns its work (the PostgreSQL
        # queue's leases went unrenewed, pg_queue.QueueLeases): sessions finish the
        # job they carry, no new one starts.
        self.paused = False
        self._timer: Any = None
        self._loops: list[LoopingCall] = []
        self._session_ds: set[defer.Deferred] = set()
        self.connections: set[RelayClient] = set()
        self._locks: dict[str, defer.DeferredLock] = {}
        self._settling: set[defer.Deferred] = set()
        self._tls_contexts = TLSContexts()
        self._early: list[Envelope] = []
        # Connections waiting for more mail for their domain (see RelayClient._wait_idle).
        self._idle = IdleConnections(reactor)
        # Failures, hold-offs and connection rates per destination.
        self.destinations = Destinations(settings, reactor, self._dispatch)
        # (arrival + lifetime, queue id): the clock's lifetime check.
        self._expiry: list[tuple[float, str]] = []

    def use_settings(self, settings: OutboundSettings, router: Router | None = None) -> None:
        """Reload: later decisions use ``settings``, and sessions started from now on
        route through ``router`` (a new one when the port or smarthost changed)."""
        self.settings = settings
        self.destinations.settings = settings
        if router is not None:
            self.router = router

    # Lifecycle.

    def now(self) -> float:
        return self.reactor.seconds()

    async def start(self) -> None:
        """Load the spool, then start the timers."""
        envelopes, problems = await threads.deferToThread(self.files.load_all_sync)
        for p in problems:
            log.warn("outbound spool: {problem}", problem=p)
        # Leftover requests from `mailhost queue` made while we were down.
        await threads.deferToThread(self.files.take_triggers_sync)
        self.running = True
        for env in envelopes:
            if env.id not in self.envelopes:
                self._adopt(env, check_hops=all(r.attempts == 0 for r in env.recipients))
        # Committed while the spool was being read (already in self.envelopes).
        early, self._early = self._early, []
        for env in early:
            self._adopt(env, check_hops=True)
        loop = LoopingCall(self._tick)
        loop.clock = self.reactor
        loop.start(max(self.settings.scan_interval, 0.1), now=False)
        trig = LoopingCall(self._check_triggers)
        trig.clock = self.reactor
        trig.start(1.0, now=False)
        self._loops = [loop, trig]
        log.info("outbound queue started with {count} messages", count=len(self.envelopes))
        self._tick()

    async def stop(self, grace: float) -> None:
        """Stop starting work; let sessions finish for ``grace`` seconds, then abort
        them. Whatever is left stays in the spool."""
        self.running = False
        self.stopping = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.destinations.stop()
        self._idle.release_all()
        pending = list(self._session_ds)
        if pending:
            sessions = defer.DeferredList(pending, consumeErrors=True)
            timeout = self.reactor.callLater(grace, self._abort_all)
            await sessions
            if timeout.active():
                timeout.cancel()
        if self._settling:
            await defer.DeferredList(list(self._settling), consumeErrors=True)

    def _abort_all(self) -> None:
        for proto in list(self.connections):
            transport: Any = proto.transport  # TCP or TLS: ITCPTransport
            if transport is not None:
                transport.abortConnection()

    # Intake.

    def add(self, env: Envelope) -> None:
        """A newly committed message (before ``start`` has loaded the spool, too)."""
        if not self.running:
            if not self.stopping:
                self.envelopes[env.id] = env
                self._early.append(env)
            return
        self._adopt(env, check_hops=True)

    def _adopt(self, env: Envelope, check_hops: bool) -> None:
        self.envelopes[env.id] = env
        heapq.heappush(self._expiry, (env.arrival + self.settings.lifetime, env.id))
        # The hop count was taken by the SpoolWriter as the message streamed in, our
        # own Received: line included; SMTP allowed max_hops before it, so one more
        # here (else mail accepted with 250 would bounce on relay but not locally).
        if check_hops and env.hops > self.settings.max_hops + 1:
            text = f"554 5.4.6 too many hops ({env.hops} Received: headers), mail loop?"
            now = self.now()
            for r in env.pending():
                record_outcome(env, r, Outcome(PERMANENT, text), now, "", self.settings)
            self._track(self._settle(env), "hop check of {qid}", env.id)
            return
        self._schedule(env)
        self._dispatch()

    def _track(self, work: Any, what: str, qid: str) -> None:
        """Run a coroutine or Deferred that ``stop`` waits for; log its failure."""
        d = work if isinstance(work, defer.Deferred) else defer.ensureDeferred(work)
        self._settling.add(d)
        d.addErrback(lambda f: log.failure(what, f, qid=qid))
        d.addBoth(lambda _: self._settling.discard(d))

    # Timing.

    def _schedule(self, env: Envelope) -> None:
        """Put each domain of ``env`` with pending recipients in ``ready`` or the heap."""
        if env.id not in self.envelopes:
            return
        now = self.now()
        due: dict[str, float] = {}
        for r in env.recipients:
            if r.status == PENDING:
                d = r.domain
                due[d] = min(due.get(d, r.next_attempt), r.next_attempt)
        for domain, t in due.items():
            key = (env.id, domain)
            if key in self.inflight or key in self.ready_keys:
                continue
            if t <= now:
                self.ready_keys.add(key)
                self.ready.setdefault(domain, deque()).append(env.id)
            else:
                self._seq += 1
                heapq.heappush(self.heap, (t, self._seq, env.id, domain))
        self._arm()

    def _arm(self) -> None:
        if not self.running or not self.heap:
            return
        when = self.heap[0][0]
        delay = max(0.0, when - self.now())
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= when:
                return
            self._timer.cancel()
        self._timer = self.reactor.callLater(delay, self._tick)

    def _tick(self) -> None:
        if not self.running:
            return
        self._timer = None
        now = self.now()
        while self.heap and self.heap[0][0] <= now:
            _t, _s, qid, domain = heapq.heappop(self.heap)
            env = self.envelopes.get(qid)
            if env is None:
                continue
            key = (qid, domain)
            if key in self.inflight or key in self.ready_keys:
                continue
            if any(
                r.status == PENDING and r.domain == domain and r.next_attempt <= now
                for r in env.recipients
            ):
                self.ready_keys.add(key)
                self.ready.setdefault(domain, deque()).append(qid)
        self._expire(now)
        self._dispatch()
        self._arm()

    def _expire(self, now: float) -> None:
        """Fail, by the clock, recipients pending past their lifetime whose last try
        never came (held-off destinations, sessions that fail before MAIL)."""
        grace = min(EXPIRY_GRACE, self.settings.retry_initial)
        while self._expiry and self._expiry[0][0] + grace <= now:
            _t, qid = heapq.heappop(self._expiry)
            env = self.envelopes.get(qid)
            if env is None or env.finished:
                continue
            expires = env.arrival + self.settings.lifetime  # reloaded lifetime applies
            if expires + grace > now:
                heapq.heappush(self._expiry, (expires, qid))
                continue
            expired = False
            for r in env.pending():
                key = (qid, r.domain)
                if key in self.inflight or (key in self.ready_keys
                                            and self.sessions.get(r.domain)):
                    # Its session records the outcome (and sees the expiry); one
                    # still routing or connecting takes it next: its last try is under
                    # way (after a restart past the lifetime, too).
                    continue
                r.status = FAILED
                if not r.status_code.startswith("4"):
                    r.status_code = "4.4.7"
                # Held off, or the host (or the queue) was down the whole time: say
                # only what is known.
                why = r.last_error or ("451 4.4.7 no delivery attempt was made within"
                                       " the queue lifetime")
                r.last_error = f"{why} (gave up after {age(env, now)})"
                expired = True
            if not env.finished:
                # Some recipients are in flight: look again a scan later.
                heapq.heappush(self._expiry, (now + self.settings.scan_interval - grace, qid))
            if expired:
                log.info("outbound: {qid} expired in the queue", qid=qid)
                self._track(self._settle(env), "outbound: expiring {qid}", qid)

    # Sessions.

    def set_paused(self, paused: bool) -> None:
        """Hold new work back (``paused``), or take it up again at once."""
        self.paused = paused
        if not paused:
            self._tick()

    def _dispatch(self) -> None:
        if not self.running or self.paused:
            return
        limit_total = max(self.settings.max_concurrency, 1)
        limit_domain = max(self.settings.max_per_domain, 1)
        now = self.now()
        for domain in list(self.ready):
            queue = self.ready[domain]
            if self.destinations.held_off(domain, now):
                continue
            # Open connections first: each woken one takes a job from the queue at once.
            while queue and self._idle.wake(domain):
                pass
            if not queue:
                del self.ready[domain]
                continue
            # A destination whose last session failed gets one probe at a time until
            # a session delivers again (as Postfix lowers its concurrency to 1).
            limit = 1 if self.destinations.probing(domain) else limit_domain
            while (
                self.total_sessions < limit_total
                and self.sessions.get(domain, 0) < limit
                and len(queue) > self.sessions.get(domain, 0)
            ):
                self._start_session(domain)
            if self.total_sessions >= limit_total:
                break

    def _start_session(self, domain: str) -> None:
        self.sessions[domain] = self.sessions.get(domain, 0) + 1
        self.total_sessions += 1
        d = defer.ensureDeferred(self._run_domain(domain))
        self._session_ds.add(d)

        def finished(result: object) -> object:
            self._session_ds.discard(d)
            self.sessions[domain] -= 1
            if not self.sessions[domain]:
                del self.sessions[domain]
            self.total_sessions -= 1
            if self.running:
                self.reactor.callLater(0, self._dispatch)
            return None

        d.addErrback(lambda f: log.failure("outbound session for {domain}", f, domain=domain))
        d.addBoth(finished)

    def _next_job(self, domain: str) -> Job | None:
        if self.stopping or self.paused:
            return None
        queue = self.ready.get(domain)
        now = self.now()
        while queue:
            qid = queue.popleft()
            key = (qid, domain)
            self.ready_keys.discard(key)
            env = self.envelopes.get(qid)
            if env is None:
                continue
            rcpts = [
                r
                for r in env.recipients
                if r.status == PENDING and r.domain == domain and r.next_attempt <= now + 1e-6
            ]
            if not rcpts:
                continue
            self.inflight.add(key)
            return Job(env, domain, rcpts, self.files.message_path(qid), started=now)
        return None

    def _wait_job(self, domain: str, timeout: float) -> defer.Deferred:
        """Fires with True when ``_dispatch`` has a job for ``domain``, with False after
        ``timeout`` seconds or at stop."""
        if self.stopping:
            return defer.succeed(False)
        return self._idle.wait(domain, timeout)

    def _drain(self, domain: str, outcome: Outcome, remote: str = "") -> None:
        """Give every due job of ``domain`` the same outcome (a routing failure)."""
        while True:
            job = self._next_job(domain)
            if job is None:
                return
            self._job_done(
                job, {r.address: outcome for r in job.recipients}, {"mx": remote, "tls": False}
            )

    async def _run_domain(self, domain: str) -> None:
        cohort = self.destinations.cohort(domain)
        try:
            route = await self.router.route(domain)
        except RoutingError as e:
            code = "451" if e.temporary else "550"
            log.info("outbound: {domain}: {error}", domain=domain,
                     error=f"{code} {e.status} {e.text}", event="route_failed")
            if e.temporary:
                self._session_failed(domain, cohort, f"451 {e.status} {e.text}")
            else:
                self._drain(domain, Outcome(PERMANENT, f"550 {e.status} {e.text}"))
            return
        hops = route.hops
        for i, hop in enumerate(hops):
            if connection_plan.is_self(self.settings.hostname, self.local_addresses, hop):
                if i == 0:
                    await self._loops_back(domain)
                    return
                # Lower-preference MX hosts than ourselves are never used (RFC 5321 §5.1).
                hops = hops[:i]
                break
        source = _DomainSource(self, domain)
        last_error = ""
        smarthost = route.smarthost
        tried = 0
        plan = None
        if (self.security is not None and not smarthost
                and configured_tls(self.settings, domain) != "none"):
            plan = await self.security.for_domain(domain, route)
        for hop in hops:
            hop_plan = None
            if plan is not None and self.security is not None:
                hop_plan = await self.security.for_hop(plan, hop)
                if hop_plan.skip is not None:
                    last_error = f"451 4.7.5 {hop_plan.skip.detail}"
                    log.warn("outbound: {domain}: {mx} not used: {error}", domain=domain,
                             mx=hop.name, error=last_error)
                    continue
            for address in hop.addresses or [hop.name]:
                if self.stopping or tried >= 10:
                    break
                tried += 1
                policy = self._policy(domain, hop, smarthost, address, hop_plan)
                endpoint = self._endpoint(address, hop.port)
                result = await self._connect_and_run(address, endpoint, policy, source)
                if plan is not None and hop_plan is not None and self.security is not None:
                    self.security.report(plan, hop_plan, hop, address, result)
                if result.tls_failed and policy.tls == "opportunistic" and not result.transacted:
                    log.info(
                        "outbound: TLS handshake with {mx} failed; retrying without TLS",
                        mx=hop.name,
                    )
                    policy.tls = "none"
                    policy.tls_context = None
                    result = await self._connect_and_run(address, endpoint, policy, source)
                if result.transacted:
                    if result.error:
                        # Its message has its attempt; the destination has a failure.
                        self._session_failed(domain, cohort, result.error, drain=False)
                    else:
                        self.destinations.session_ok(domain)
                    return
                last_error = result.error or f"no answer from {hop.name}"
                log.warn(
                    "outbound: {domain} via {mx} [{address}]:{port} failed: {error}",
                    domain=domain,
                    mx=hop.name,
                    address=address,
                    port=hop.port,
                    error=last_error,
                )
        if not self.stopping:
            text = last_error if last_error[:3].isdigit() else f"451 4.4.1 {last_error}"
            if text[:1] == "5":
                # A 5xx greeting or EHLO refusal from every host: still retry.
                text = "451 4.4.1 " + text
            self._session_failed(domain, cohort, text)

    async def _connect_and_run(
        self, host: str, endpoint: IStreamClientEndpoint, policy: ClientPolicy, source: Any
    ) -> SessionResult:
        await self.destinations.connect_slot(host, lambda: self.stopping)
        if self.stopping:
            return SessionResult(error="stopping")
        return await run_session(endpoint, policy, source, self.connections, reactor=self.reactor)

    def _session_failed(self, domain: str, cohort: int, text: str, drain: bool = True) -> None:
        """A session to ``domain`` failed: count it (once per cohort), hold the
        destination off, and record the failure against every message due there."""
        self.destinations.session_failed(domain, cohort)
        if drain:
            self._drain(domain, Outcome(TEMPORARY, text))

    async def _loops_back(self, domain: str) -> None:
        if self.is_local_domain(domain):
            while True:
                job = self._next_job(domain)
                if job is None:
                    return
                try:
                    outcomes = await self.deliver_local(job)
                except Exception as e:
                    outcomes = {
                        r.address: Outcome(TEMPORARY, f"451 4.3.0 local delivery failed: {e}")
                        for r in job.recipients
                    }
                self._job_done(job, outcomes, {"mx": self.settings.hostname, "tls": False})
        else:
            self._drain(
                domain,
                Outcome(PERMANENT, f"554 5.4.6 mail for {domain} loops back to myself"),
            )

    def _policy(self, domain: str, hop: Hop, smarthost: bool, address: str,
                hop_plan: HopPlan | None = None) -> ClientPolicy:
        return connection_plan.client_policy(self.settings, self.security, self._tls_contexts,
                                             domain, hop, smarthost, address, hop_plan)

    def _endpoint(self, address: str, port: int) -> IStreamClientEndpoint:
        return connection_plan.endpoint(self.reactor, self.settings, address, port)

    # Results.

    def _job_done(self, job: Job, outcomes: dict[str, Outcome], info: dict[str, Any]) -> None:
        env = job.envelope
        self.inflight.discard((env.id, job.domain))
        now = self.now()
        remote = info.get("mx", "")
        results = []
        for r in job.recipients:
            o = outcomes.get(r.address) or Outcome(TEMPORARY, "451 4.4.0 no result")
            results.append(f"{r.address}={o.kind}:{o.reply}")
            if self.stopping and o.kind == TEMPORARY:
                continue  # interrupted by our own shutdown: not an attempt
            if r.status == PENDING:
                record_outcome(env, r, o, now, remote, self.settings)
        log.info(
            "outbound attempt {queue_id} domain={domain} mx={mx} tls={tls} "
            "duration={duration:.3f}s {results}",
            queue_id=env.id,
            domain=job.domain,
            mx=remote,
            tls=info.get("tls", False),
            duration=now - job.started if job.started else 0.0,
            results="; ".join(results),
            recipients=results,
            event="outbound_attempt",
        )
        for observe in self.attempt_observers:
            observe(results)
        if env.id not in self.envelopes:
            return  # deleted meanwhile
        if env.finished and env.id not in self._locks and not reports_due(env, self.now(), self.settings):
            # The common end of a message: nothing to persist or report, just remove it
            # (no coroutine or lock; ``_settle`` does the same the long way).
            del self.envelopes[env.id]
            self._track(self.files.remove(env.id), "outbound: removing {qid}", env.id)
            return
        self._track(self._settle(env), "outbound: settling {qid}", env.id)
        if not self.stopping:
            self._schedule(env)

    async def _settle(self, env: Envelope) -> None:
        """Persist ``env``, send the DSNs it now owes, and remove it once finished."""
        lock = self._locks.setdefault(env.id, defer.DeferredLock())
        await lock.acquire()
        try:
            if env.id not in self.envelopes:
                return
            reports = reports_due(env, self.now(), self.settings)
            if env.finished and not reports:
                await self._remove(env)
                return
            await self.files.save_envelope(env)
            if reports:
                rcpts, recs = zip(*reports, strict=True)
                if env.sender:
                    await self.bounce(env, list(recs))
                else:
                    log.info(
                        "outbound: {qid} from the null sender failed; no DSN is sent",
                        qid=env.id,
                    )
                for r in rcpts:
                    if r.status != PENDING:
                        r.dsn_done = True
                if env.finished:
                    await self._remove(env)
                else:
                    await self.files.save_envelope(env)
        finally:
            lock.release()
            if env.id not in self.envelopes:
                self._locks.pop(env.id, None)

    async def _remove(self, env: Envelope) -> None:
        self.envelopes.pop(env.id, None)
        await self.files.remove(env.id)

    # Requests from `mailhost queue`.

    def _check_triggers(self) -> None:
        if not self.files.has_triggers_sync():  # one small listdir per second
            return
        d = threads.deferToThread(self.files.take_triggers_sync)
        d.addCallback(self._apply_triggers)
        d.addErrback(lambda f: log.failure("outbound: queue triggers", f))

    def _apply_triggers(self, triggers: list[dict[str, Any]]) -> None:
        for t in triggers:
            action, qid = t.get("action"), t.get("id")
            if action == "flush":
                self.flush()
            elif action == "retry" and qid:
                self.flush(qid)
            elif action == "delete" and qid:
                self.delete(qid)

    def flush(self, qid: str | None = None) -> int:
        """Make pending recipients due now; returns how many messages were touched."""
        now = self.now()
        self.destinations.clear()  # an operator who flushes wants a real try now
        envs = [self.envelopes[qid]] if qid in self.envelopes else []
        if qid is None:
            envs = list(self.envelopes.values())
        for env in envs:
            for r in env.pending():
                r.next_attempt = min(r.next_attempt, now)
            self._schedule(env)
        log.info("outbound: flush of {n} messages", n=len(envs))
        self._dispatch()
        return len(envs)

    def delete(self, qid: str) -> bool:
        env = self.envelopes.pop(qid, None)
        if env is None:
            return False
        log.info("outbound: {qid} deleted by request", qid=qid)
        d = self.files.remove(qid)
        d.addErrback(lambda f: log.failure("outbound: delete {qid}", f, qid=qid))
        return True
