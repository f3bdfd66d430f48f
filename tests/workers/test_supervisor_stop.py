"""The supervisor's SIGTERM with real worker processes whose ends come in awkward orders.

Regression (``test_sigterm_under_load_loses_nothing`` hung about 1 run in 8 under
load): a worker that has exited closes its channel pipe turns before its
``processEnded``; another worker ending in between had its "worker.gone" relayed into
that closed pipe, Twisted raised KeyError inside the second worker's ``processEnded``,
its ``ended`` never fired, and twistd waited for it for ever (the SIGKILL after the
grace has nothing left to kill).
"""

from __future__ import annotations

import sys
import time

import pytest_twisted
from twisted.internet import defer, reactor, task

from mailhost.config import Config
from mailhost.workers.supervisor import Supervisor

# A stand-in worker (the supervisor appends --worker N --worker-fds ...). Worker 1
# closes the supervisor's channel into it (fd 4) at once, says so, ignores SIGTERM for
# a while and then exits: between the close and its end, worker 0 ends on SIGTERM.
WORKER = """
import os, signal, sys, time
index = int(sys.argv[sys.argv.index("--worker") + 1])
if index == 1:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.close(4)
os.write(3, b'["ready"]\\n')
time.sleep(1.5 if index == 1 else 30)
"""


class _Supervisor(Supervisor):
    def __init__(self, config: Config, count: int) -> None:
        super().__init__(config, count, argv=[sys.executable, "-c", WORKER])
        self.ready: set[int] = set()

    def from_worker(self, worker, line: bytes) -> None:
        if line == b'["ready"]':
            self.ready.add(worker.index)
        super().from_worker(worker, line)


def _no_listeners() -> Config:
    config = Config()
    for section in ("smtp", "submission", "pop3", "imap"):
        getattr(config, section).listen = []
    config.server.shutdown_grace = 30.0  # the SIGKILL after it would not help anyway
    return config


@pytest_twisted.ensureDeferred
async def test_sigterm_ends_when_a_worker_ends_after_closing_its_channel():
    supervisor = _Supervisor(_no_listeners(), 2)
    supervisor.startService()
    workers = dict(supervisor.workers)
    try:
        deadline = time.monotonic() + 30
        while supervisor.ready != {0, 1} or workers[1].channel_open:
            assert time.monotonic() < deadline, "the stand-in workers never started"
            await task.deferLater(reactor, 0.05)
        stopped = supervisor.stopService()
        timeout = reactor.callLater(20, stopped.cancel)
        try:
            await stopped
        except defer.CancelledError:
            raise AssertionError("SIGTERM never finished: a worker's end was lost") from None
        timeout.cancel()
        assert all(w.ended.called for w in workers.values())
        assert supervisor.workers == {}
    finally:
        for worker in workers.values():
            worker.signal("KILL")
