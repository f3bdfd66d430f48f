"""The replicated throttle, rate limits and connection counts, over an in-memory
"supervisor" that hands each worker's facts to the others (as supervisor.py does)."""

from __future__ import annotations

import json

from twisted.internet.task import Clock

from mailhost.abuse.ratelimit import RateLimiter
from mailhost.auth.throttle import LoginThrottle
from mailhost.config import Config, ConfigError, validate
from mailhost.limits import ConnectionLimiter, KindLimits
from mailhost.pop3.lock import FileMaildropLocks
from mailhost.workers import worker_count
from mailhost.workers.channel import WorkerChannel
from mailhost.workers.metrics import merge
from mailhost.workers.shared import SharedConnectionLimiter, SharedRateLimiter, SharedThrottle


class _Relay:
    """Stands in for the supervisor and the pipes: a published line reaches every
    other channel as [kind, source, *args]."""

    def __init__(self, count: int) -> None:
        self.channels = []
        for index in range(count):
            channel = WorkerChannel()
            channel.connected_to_supervisor = True
            channel.publish = self._publisher(index)  # type: ignore[method-assign]
            channel.tally = self._tallier(index)  # type: ignore[method-assign]
            self.channels.append(channel)

    def _publisher(self, index: int):
        def publish(kind: str, *args) -> None:
            line = json.dumps([kind, index, *args]).encode()
            for i, other in enumerate(self.channels):
                if i != index:
                    other.lineReceived(line)
        return publish

    def _tallier(self, index: int):
        """A tally is sent at once, as a batch of one fact."""
        publish = self._publisher(index)

        def tally(kind: str, key: tuple, column: int, columns: int) -> None:
            counts = [0] * columns
            counts[column] = 1
            publish(kind, [[*key, *counts]])
        return tally


def test_a_lockout_counts_failures_from_every_worker():
    relay = _Relay(2)
    one, two = (SharedThrottle.adopt(LoginThrottle(max_failures=3), c) for c in relay.channels)
    one.failed("192.0.2.7")
    two.failed("192.0.2.7")
    one.failed("192.0.2.7")
    assert one.locked("192.0.2.7") and two.locked("192.0.2.7")
    two.succeeded("192.0.2.8", "alice@example.test")
    assert one.known_good("192.0.2.8", "alice@example.test")


def test_a_rate_limit_drains_with_messages_sent_through_any_worker():
    relay = _Relay(2)
    clock = Clock()
    one, two = (SharedRateLimiter.adopt(RateLimiter(messages_per_hour=2, clock=clock), c)
                for c in relay.channels)
    assert one.take_message("alice@example.test") == 0.0
    assert two.take_message("alice@example.test") == 0.0
    assert one.take_message("alice@example.test") > 0
    assert two.take_message("alice@example.test") > 0


def test_connection_limits_count_every_worker_and_forget_a_dead_one():
    relay = _Relay(2)
    clock = Clock()
    one, two = (SharedConnectionLimiter.adopt(ConnectionLimiter(0, 1, clock=clock,
                                                                evict_idle=False), c)
                for c in relay.channels)
    caps = KindLimits(max_connections=3, max_per_ip=2)
    assert one.admit("imap", "192.0.2.7", caps) is None
    assert two.admit("imap", "192.0.2.7", caps) is None
    assert one.admit("imap", "192.0.2.7", caps) == "max_connections_per_ip"
    assert two.admit("imap", "192.0.2.9", caps) is None
    assert one.admit("imap", "192.0.2.10", caps) == "max_connections"
    one.release("imap", "192.0.2.7")
    assert two.admit("imap", "192.0.2.7", caps) is None
    # worker two dies: the supervisor says so, and its three connections are gone
    relay.channels[0].lineReceived(b'["worker.gone", 1]')
    assert one.total["imap"] == 0 and not one.per_client


def test_pop3_file_locks_hold_across_lock_sets(tmp_path):
    """Two FileMaildropLocks stand for two workers: one maildrop, one session."""
    one, two = FileMaildropLocks(str(tmp_path)), FileMaildropLocks(str(tmp_path))
    assert one.acquire("alice@example.test")
    assert not two.acquire("alice@example.test")
    assert two.acquire("bob@example.test")
    one.release("alice@example.test")
    assert two.acquire("alice@example.test")


def test_merged_metrics_add_up_series_by_series():
    page = (
        "# HELP mailhost_connections_total Accepted connections\n"
        "# TYPE mailhost_connections_total counter\n"
        'mailhost_connections_total{protocol="smtp"} 3.0\n'
        "# HELP mailhost_queue_messages Messages in the outbound queue\n"
        "# TYPE mailhost_queue_messages gauge\n"
        "mailhost_queue_messages 2.0\n"
    )
    merged = merge([page, page.replace("3.0", "4.0").replace("2.0", "0.0")])
    assert 'mailhost_connections_total{protocol="smtp"} 7.0' in merged
    assert "mailhost_queue_messages 2.0" in merged


def test_workers_setting():
    assert worker_count(3) == 3
    assert worker_count("auto") >= 1
    config = Config()
    config.server.workers = 0
    try:
        validate(config)
    except ConfigError as e:
        assert "server.workers" in str(e)
    else:
        raise AssertionError("workers = 0 accepted")
    config.server.workers = 2
    config.store.backend = "memory"
    try:
        validate(config)
    except ConfigError as e:
        assert "server.workers" in str(e)
    else:
        raise AssertionError("workers = 2 over a memory store accepted")
