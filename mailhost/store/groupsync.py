"""Group commit: many concurrent deliveries share one round of directory fsyncs.

A caller asks for a set of paths to be fsynced and gets a Deferred. Requests that
arrive while a round is running wait for the next round, which covers all of them
with one fsync per distinct path. The fsyncs run in a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from twisted.internet import defer


def fsync_paths(paths: Iterable[str]) -> None:
    """fsync each file or directory (directories make renames/links durable)."""
    for path in sorted(paths):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class GroupSync:
    """Batches fsync requests; ``run_in_thread(f, *args)`` returns a Deferred."""

    def __init__(self, run_in_thread: Callable[..., defer.Deferred]) -> None:
        self._run = run_in_thread
        self._queue: list[tuple[set[str], defer.Deferred]] = []
        self._running = False
        self.rounds = 0  # for tests and benchmarks: how many fsync rounds ran

    def sync(self, paths: Iterable[str]) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._queue.append((set(paths), d))
        self._kick()
        return d

    def _kick(self) -> None:
        if self._running or not self._queue:
            return
        batch, self._queue = self._queue, []
        paths = set().union(*(p for p, _ in batch))
        self._running = True
        self.rounds += 1

        def done(result):
            self._running = False
            for _, d in batch:
                if isinstance(result, BaseException):
                    d.errback(result)
                else:
                    d.callback(None)
            self._kick()

        def failed(failure):
            done(failure.value)

        self._run(fsync_paths, paths).addCallbacks(done, failed)
