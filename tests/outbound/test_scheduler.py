"""Scheduler backoff, expiry, DSN decisions and grouping, driven by task.Clock."""

from __future__ import annotations

import dataclasses

import pytest_twisted
from twisted.internet import defer, reactor, task

from mailhost.config import Config
from mailhost.outbound.interfaces import QueueRecipient
from mailhost.outbound.retry import retry_delay
from mailhost.outbound.routing import PermanentRoutingError, TemporaryRoutingError
from mailhost.outbound.scheduler import Scheduler
from mailhost.outbound.spool import SpoolFiles
from mailhost.outbound.spool_writer import SpoolWriter
from mailhost.settings import OutboundSettings


class FakeRouter:
    def __init__(self, exc):
        self.exc = exc
        self.calls = []

    async def route(self, domain):
        self.calls.append(domain)
        raise self.exc


async def idle(s: Scheduler):
    """Let threads (envelope saves) and sessions finish, on the real reactor."""
    for _ in range(200):
        await task.deferLater(reactor, 0.01)
        if not s._settling and not s._session_ds:
            return


async def until(pred, timeout=10.0):
    for _ in range(int(timeout / 0.01)):
        if pred():
            return
        await task.deferLater(reactor, 0.01)
    raise AssertionError("condition not reached")


async def make(tmp_path, router, **outbound):
    config = Config()
    config.server.hostname = "a.test"
    for k, v in outbound.items():
        setattr(config.outbound, k, v)
    clock = task.Clock()
    clock.advance(1_000_000)
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    bounces = []

    def bounce(env, reports):
        bounces.append((env.id, reports))
        return defer.succeed(None)

    s = Scheduler(OutboundSettings.from_config(config), files, router, bounce,
                  lambda job: defer.succeed({}), lambda d: d == "example.test", clock)
    await s.start()
    return s, clock, files, bounces


async def queue(s, files, clock, sender, rcpts):
    w = SpoolWriter(files, sender, None, None, s.add, clock.seconds)
    w.write(b"Subject: t\r\n\r\nbody\r\n")
    return await w.commit([QueueRecipient(r) if isinstance(r, str) else r for r in rcpts])


def test_retry_delay_formula():
    assert [retry_delay(n, 300, 3600) for n in range(1, 7)] == [300, 600, 1200, 2400, 3600, 3600]


@pytest_twisted.ensureDeferred
async def test_backoff_then_bounce_after_lifetime(tmp_path):
    router = FakeRouter(TemporaryRoutingError("4.4.3", "SERVFAIL"))
    s, clock, files, bounces = await make(tmp_path, router, retry_initial=300, retry_max=3600,
                                          lifetime=3 * 3600, scan_interval=30)
    t0 = clock.seconds()
    qid = await queue(s, files, clock, "alice@example.test", ["bob@remote.example"])
    await idle(s)
    env = s.envelopes[qid]
    (r,) = env.recipients
    assert r.attempts == 1 and r.next_attempt == t0 + 300 and r.status == "pending"
    assert files.load_envelope_sync(qid).recipients[0].attempts == 1  # persisted
    expected = [t0 + 900, t0 + 2100, t0 + 4500, t0 + 8100, t0 + 3 * 3600]  # capped at lifetime
    for want in expected:
        clock.advance(r.next_attempt - clock.seconds())
        await idle(s)
        assert r.next_attempt == want, (r.attempts, r.next_attempt - t0)
    assert not bounces
    clock.advance(r.next_attempt - clock.seconds())
    await idle(s)
    assert r.status == "failed" and r.attempts == 7
    ((bid, reports),) = bounces
    assert bid == qid and reports[0].action == "failed" and reports[0].status == "4.4.3"
    assert qid not in s.envelopes and files.load_envelope_sync(qid) is None
    await s.stop(1)


@pytest_twisted.ensureDeferred
async def test_permanent_failure_bounces_at_once_null_sender_never(tmp_path):
    router = FakeRouter(PermanentRoutingError("5.1.10", "null MX"))
    s, clock, files, bounces = await make(tmp_path, router)
    qid = await queue(s, files, clock, "alice@example.test", ["x@nomail.example"])
    q2 = await queue(s, files, clock, "", ["y@nomail.example"])
    await idle(s)
    assert [b[0] for b in bounces] == [qid]
    assert bounces[0][1][0].status == "5.1.10"
    assert qid not in s.envelopes and q2 not in s.envelopes
    await s.stop(1)


@pytest_twisted.ensureDeferred
async def test_notify_never_and_delay_warning_once(tmp_path):
    router = FakeRouter(TemporaryRoutingError("4.4.3", "timeout"))
    s, clock, files, bounces = await make(tmp_path, router, retry_initial=60, retry_max=60,
                                          delay_warning=100, lifetime=1000)
    q_never = await queue(s, files, clock, "alice@example.test",
                          [QueueRecipient("n@remote.example", frozenset({"NEVER"}))])
    q_warn = await queue(s, files, clock, "alice@example.test", ["w@other.example"])
    await idle(s)
    for _ in range(4):
        clock.advance(60)
        await idle(s)
    delayed = [b for b in bounces if b[1][0].action == "delayed"]
    assert [b[0] for b in delayed] == [q_warn]
    assert delayed[0][1][0].will_retry_until
    for _ in range(20):
        clock.advance(60)
        await idle(s)
    failed = [b[0] for b in bounces if b[1][0].action == "failed"]
    assert failed == [q_warn]  # NOTIFY=NEVER: no bounce for the other one
    assert not s.envelopes and q_never
    await s.stop(1)


@pytest_twisted.ensureDeferred
async def test_too_many_hops_bounces_before_relay(tmp_path):
    """SMTP accepts max_hops Received: lines from the client and adds its own; that
    message is relayed, one more line bounces (before any routing)."""
    router = FakeRouter(TemporaryRoutingError("4.4.3", "unused"))
    s, clock, files, bounces = await make(tmp_path, router)
    s.use_settings(dataclasses.replace(s.settings, max_hops=3))
    ours = b"Received: from client by us\r\n"
    w = SpoolWriter(files, "alice@example.test", None, None, s.add, clock.seconds)
    w.write(ours + b"Received: a\r\nReceived: b\r\nReceived: c\r\n\r\nat the limit\r\n")
    await w.commit([QueueRecipient("y@remote.example")])
    await until(lambda: router.calls == ["remote.example"])
    assert bounces == []
    w = SpoolWriter(files, "alice@example.test", None, None, s.add, clock.seconds)
    w.write(ours + b"Received: a\r\nReceived: b\r\nReceived: c\r\nReceived: d\r\n\r\nloop\r\n")
    qid = await w.commit([QueueRecipient("z@remote.example")])
    await idle(s)
    assert router.calls == ["remote.example"]
    assert bounces[0][0] == qid and bounces[0][1][0].status == "5.4.6"
    await s.stop(1)


@pytest_twisted.ensureDeferred
async def test_one_session_per_domain_and_limits(tmp_path):
    gate = defer.Deferred()

    class SlowRouter:
        calls = []

        async def route(self, domain):
            self.calls.append(domain)
            await gate
            raise TemporaryRoutingError("4.4.3", "x")

    router = SlowRouter()
    s, clock, files, bounces = await make(tmp_path, router, max_concurrency=3, max_per_domain=2)
    for i in range(4):
        await queue(s, files, clock, "alice@example.test",
                    [f"a{i}@one.example", f"b{i}@one.example", f"c{i}@two.example",
                     f"d{i}@three.example"])
    await task.deferLater(reactor, 0.05)
    assert s.total_sessions == 3
    assert s.sessions.get("one.example", 0) <= 2
    gate.callback(None)
    await until(lambda: all(r.attempts == 1 for e in s.envelopes.values() for r in e.recipients))
    await idle(s)
    # Every job failed once: each recipient got exactly one attempt.
    for env in s.envelopes.values():
        assert [r.attempts for r in env.recipients] == [1, 1, 1, 1]
    await s.stop(1)


@pytest_twisted.ensureDeferred
async def test_restart_reloads_pending_and_cli_flush(tmp_path):
    router = FakeRouter(TemporaryRoutingError("4.4.3", "x"))
    s, clock, files, _ = await make(tmp_path, router, retry_initial=3600)
    qid = await queue(s, files, clock, "alice@example.test", ["bob@remote.example"])
    await idle(s)
    await s.stop(1)
    s2, clock2, _files, _ = await make(tmp_path, router, retry_initial=3600)
    assert qid in s2.envelopes and s2.envelopes[qid].recipients[0].attempts == 1
    n = len(router.calls)
    files.add_trigger_sync("flush")
    clock2.advance(1.0)  # the trigger check runs every second
    await until(lambda: s2.envelopes[qid].recipients[0].attempts == 2)
    await idle(s2)
    assert len(router.calls) == n + 1
    files.add_trigger_sync("delete", qid)
    clock2.advance(1.0)
    await until(lambda: qid not in s2.envelopes and files.load_envelope_sync(qid) is None)
    await s2.stop(1)


@pytest_twisted.ensureDeferred
async def test_a_domain_whose_hosts_all_refuse_is_held_off_until_flush(tmp_path):
    from twisted.internet import error

    from mailhost.outbound.routing import Hop, Route

    class OneHop:
        calls = []

        async def route(self, domain):
            self.calls.append(domain)
            return Route(domain, [Hop("mx.remote.example", 25, ["192.0.2.1"])])

    class Refusing:
        connects = 0

        def connect(self, factory):
            Refusing.connects += 1
            return defer.fail(error.ConnectionRefusedError())

    router = OneHop()
    s, clock, files, bounces = await make(tmp_path, router, retry_initial=300, retry_max=3600)
    s._endpoint = lambda address, port: Refusing()
    first = await queue(s, files, clock, "alice@example.test", ["a@remote.example"])
    await idle(s)
    assert Refusing.connects == 1 and s.envelopes[first].recipients[0].attempts == 1
    assert s.destinations.down["remote.example"] == clock.seconds() + 60  # min(retry_initial, 60 s)
    # Mail arriving meanwhile waits: no connection attempt per message.
    later = [await queue(s, files, clock, "alice@example.test", [f"b{i}@remote.example"])
             for i in range(3)]
    await idle(s)
    assert Refusing.connects == 1 and len(router.calls) == 1
    assert all(s.envelopes[q].recipients[0].attempts == 0 for q in later)
    # The hold-off ends: one more try, and every waiting message gets its attempt.
    clock.advance(60)
    await until(lambda: all(s.envelopes[q].recipients[0].attempts == 1 for q in later))
    assert Refusing.connects >= 2
    # A flush is a real try now, hold-off or not.
    s.flush()
    await idle(s)
    assert Refusing.connects >= 3
    assert not bounces
    await s.stop(1)


@pytest_twisted.ensureDeferred
async def test_regression_restart_past_lifetime_expired_the_message_its_retry_was_routing(
        tmp_path):
    """kill -9 mid-delivery, restart after the lifetime had passed: start() began the
    message's retry (its session routing) and then, in the same turn, the lifetime
    clock failed it as 'never tried', so the retry found nothing to send and the
    message bounced untried (tests/e2e/test_outbound_relay.py's kill -9 test under
    load, lifetime 5 s). The try under way is the last try: its outcome decides."""
    gate = defer.Deferred()

    class SlowRouter:
        calls: list[str] = []

        async def route(self, domain):
            self.calls.append(domain)
            await gate
            raise TemporaryRoutingError("4.4.3", "SERVFAIL after the restart")

    config = Config()
    config.server.hostname = "a.test"
    config.outbound.retry_initial = 1.0
    config.outbound.lifetime = 5.0
    clock = task.Clock()
    clock.advance(1_000_000)
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    # Spooled by the process that was killed (its delivery never recorded an attempt).
    writer = SpoolWriter(files, "kim@example.test", None, None, lambda env: None,
                         clock.seconds)
    writer.write(b"Subject: survive\r\n\r\nbody\r\n")
    qid = await writer.commit([QueueRecipient("dana@slow.example")])
    clock.advance(10.0)  # down for longer than lifetime + grace
    bounces = []

    def bounce(env, reports):
        bounces.append((env.id, reports))
        return defer.succeed(None)

    router = SlowRouter()
    s = Scheduler(OutboundSettings.from_config(config), files, router, bounce,
                  lambda job: defer.succeed({}), lambda d: d == "example.test", clock)
    await s.start()
    try:
        await idle(s)
        assert router.calls == ["slow.example"]
        assert not bounces, "failed by the clock while its retry was under way"
        (r,) = s.envelopes[qid].recipients
        assert r.status == "pending"
        clock.advance(config.outbound.scan_interval)  # a later scan leaves it alone too
        await idle(s)
        assert not bounces
        gate.callback(None)  # the retry ends: its outcome is the message's last word
        await until(lambda: bounces)
        ((bid, reports),) = bounces
        assert bid == qid and reports[0].action == "failed"
        assert "SERVFAIL after the restart" in r.last_error and r.attempts == 1
    finally:
        if not gate.called:
            gate.callback(None)
        await s.stop(1)


@pytest_twisted.ensureDeferred
async def test_a_recipient_never_tried_expires_without_blaming_the_destination(tmp_path):
    """A recipient no session ever tried (the queue paused, or the host down past the
    lifetime) expired with "never tried: the destination was held off", which sent
    the sender's postmaster after a destination that was never contacted; the report
    now says only what is known: no attempt was made within the lifetime."""
    router = FakeRouter(TemporaryRoutingError("4.4.3", "SERVFAIL"))
    s, clock, files, bounces = await make(tmp_path, router, retry_initial=60, lifetime=300)
    try:
        s.set_paused(True)
        qid = await queue(s, files, clock, "kim@example.test", ["dana@far.example"])
        for _ in range(8):
            clock.advance(60)
            await idle(s)
        await until(lambda: bounces)
        ((bid, (report,)),) = bounces
        assert bid == qid and report.action == "failed"
        assert "no delivery attempt was made" in report.diagnostic, report.diagnostic
        assert "held off" not in report.diagnostic
        assert router.calls == []
    finally:
        await s.stop(1)
