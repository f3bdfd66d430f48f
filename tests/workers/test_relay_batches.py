"""The workers' relay is batched: a worker's facts leave in one write per batch, a
burst of connections from one client is one row, and the supervisor relays what one
turn brought in one write per worker (issue 18: the relay grew with rate x N)."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailhost.config import Config
from mailhost.limits import ConnectionLimiter, KindLimits
from mailhost.workers.channel import BATCH_SECONDS, WorkerChannel
from mailhost.workers.shared import SharedConnectionLimiter
from mailhost.workers.supervisor import Supervisor, WorkerProcess


def _channel(clock: Clock) -> tuple[WorkerChannel, StringTransport]:
    channel = WorkerChannel(reactor=clock)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def _lines(transport: StringTransport) -> list[list]:
    data = transport.value()
    transport.clear()
    return [json.loads(line) for line in data.splitlines() if line]


def test_a_burst_of_connections_from_one_client_is_one_row_in_one_write():
    clock = Clock()
    channel, transport = _channel(clock)
    writes = []
    write = transport.write
    transport.write = lambda data: (writes.append(data), write(data))  # type: ignore[method-assign]
    limiter = SharedConnectionLimiter.adopt(
        ConnectionLimiter(0, 1, clock=clock, evict_idle=False), channel)
    caps = KindLimits(max_connections=1000, max_per_ip=1000)
    for _ in range(200):
        assert limiter.admit("smtp", "192.0.2.7", caps) is None
    for _ in range(199):
        limiter.release("smtp", "192.0.2.7")
    channel.publish("throttle.failed", "192.0.2.8")
    assert transport.value() == b""  # nothing before the end of the turn
    clock.advance(0)
    assert len(writes) == 1
    assert _lines(transport) == [["throttle.failed", "192.0.2.8"],
                                 ["conns", [["smtp", "192.0.2.7", 200, 199]]]]


def test_facts_right_after_a_batch_wait_for_the_next_one():
    clock = Clock()
    channel, transport = _channel(clock)
    channel.publish("spool.new", "a")
    clock.advance(0)  # quiet before: out at once
    assert _lines(transport) == [["spool.new", "a"]]
    channel.publish("spool.new", "b")
    channel.publish("spool.new", "c")
    clock.advance(BATCH_SECONDS / 2)
    assert transport.value() == b""
    clock.advance(BATCH_SECONDS / 2)
    assert _lines(transport) == [["spool.new", "b"], ["spool.new", "c"]]


def test_a_batch_applies_opens_before_closes():
    """A close in a batch may be of a connection opened in the same batch: the
    receiver must not drop it as a close of nothing (which would leak a count)."""
    clock = Clock()
    receiver = SharedConnectionLimiter.adopt(
        ConnectionLimiter(0, 1, clock=clock, evict_idle=False), WorkerChannel(reactor=clock))
    receiver.channel.lineReceived(b'["conns",1,[["imap","192.0.2.7",2,1]]]')
    assert receiver.total["imap"] == 1
    receiver.channel.lineReceived(b'["conns",1,[["imap","192.0.2.7",0,1]]]')
    assert receiver.total["imap"] == 0 and not receiver.per_client
    receiver.channel.lineReceived(b'["conns",1,[["imap","192.0.2.7",0,1]]]')  # nothing open
    assert receiver.total["imap"] == 0


class _Child:
    """A worker process's transport that records what the supervisor writes to it."""

    pid = 4242

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writeToChild(self, fd: int, data: bytes) -> None:  # noqa: N802 (Twisted's name)
        self.writes.append(data)


def _supervisor(count: int) -> tuple[Supervisor, Clock, list[WorkerProcess]]:
    clock = Clock()
    supervisor = Supervisor(Config(), count, reactor=clock)
    workers = []
    for index in range(count):
        worker = WorkerProcess(supervisor, index)
        worker.transport = _Child()  # type: ignore[assignment]
        supervisor.workers[index] = worker
        workers.append(worker)
    return supervisor, clock, workers


def test_the_supervisor_relays_a_turn_in_one_write_per_worker():
    supervisor, clock, workers = _supervisor(3)
    workers[0].childDataReceived(3, b'["throttle.failed","192.0.2.8"]\n'
                                    b'["conns",[["smtp","192.0.2.7",5,2]]]\n')
    workers[1].childDataReceived(3, b'["conns",[["smtp","192.0.2.7",1,0]]]\n')
    assert all(not w.transport.writes for w in workers)
    clock.advance(0)
    writes = [w.transport.writes for w in workers]
    assert [len(w) for w in writes] == [1, 1, 1]
    assert [json.loads(x) for x in writes[0][0].splitlines()] == [
        ["conns", 1, [["smtp", "192.0.2.7", 1, 0]]]]
    assert len(writes[2][0].splitlines()) == 3  # both workers' facts
    # A worker that starts now hears of the open connections, one row per worker.
    late = WorkerProcess(supervisor, 3)
    late.transport = _Child()  # type: ignore[assignment]
    supervisor._brief(late)
    (brief,) = late.transport.writes
    facts = [json.loads(x) for x in brief.splitlines()]
    assert ["conns", 0, [["smtp", "192.0.2.7", 3, 0]]] in facts
    assert ["conns", 1, [["smtp", "192.0.2.7", 1, 0]]] in facts
    assert ["throttle.failed", 0, "192.0.2.8"] in facts


def test_a_worker_joining_or_leaving_mid_turn_counts_each_connection_once():
    """Facts wait for the end of the turn: a worker started meanwhile is briefed with
    them (and must not get them again), and a worker's end follows its last facts (a
    'gone' before them would leave its connections counted for ever)."""
    supervisor, clock, workers = _supervisor(2)
    workers[0].childDataReceived(3, b'["conns",[["smtp","192.0.2.7",2,0]]]\n')
    late = WorkerProcess(supervisor, 2)
    late.transport = _Child()  # type: ignore[assignment]
    supervisor._join(late)
    clock.advance(0)
    facts = [json.loads(x) for w in late.transport.writes for x in w.splitlines()]
    assert facts == [["conns", 0, [["smtp", "192.0.2.7", 2, 0]]]]
    assert [json.loads(x) for x in workers[1].transport.writes[0].splitlines()] == [
        ["conns", 0, [["smtp", "192.0.2.7", 2, 0]]]]

    workers[1].transport.writes.clear()
    workers[0].childDataReceived(3, b'["conns",[["smtp","192.0.2.8",1,0]]]\n')
    supervisor.worker_ended(workers[0], _Ended())
    clock.advance(0)
    facts = [json.loads(x) for w in workers[1].transport.writes for x in w.splitlines()]
    assert facts == [["conns", 0, [["smtp", "192.0.2.8", 1, 0]]], ["worker.gone", 0]]


class _Ended:
    class value:  # noqa: N801 (a Failure's value, as processEnded gets it)
        exitCode = 0
        signal = None
