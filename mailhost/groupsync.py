"""Group commit: concurrent deliveries share rounds of directory fsyncs.

Worker threads call ``GroupSync.sync(paths)`` after linking their files. The first
caller becomes the leader and fsyncs everything registered so far; callers arriving
meanwhile wait for the next round, which one of them leads for all of them. A
caller returns only once a round that started after its registration has finished,
so its links are durable. This keeps each delivery to one thread hop and lets N
concurrent deliveries share about one directory fsync.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable


def fsync_paths(paths: Iterable[str]) -> None:
    """fsync each file or directory (a directory fsync makes its links durable)."""
    for path in sorted(paths):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class GroupSync:
    """Thread-side group commit of fsyncs. Call ``sync`` from worker threads only."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._next_round = 1  # the round that will take the pending paths
        self._done_round = 0
        self._leading = False
        self._errors: dict[int, BaseException] = {}
        self.rounds = 0  # for tests and benchmarks

    def sync(self, paths: Iterable[str]) -> None:
        with self._cond:
            self._pending.update(paths)
            mine = self._next_round
            while self._done_round < mine:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                batch, self._pending = self._pending, set()
                current = self._next_round
                self._next_round += 1
                self._cond.release()
                error = None
                try:
                    fsync_paths(batch)
                except BaseException as e:  # reported to every caller of this round
                    error = e
                finally:
                    self._cond.acquire()
                    self._leading = False
                    self._done_round = current
                    self.rounds += 1
                    if error is not None:
                        self._errors[current] = error
                    self._cond.notify_all()
            error = self._errors.get(mine)
            for old in [r for r in self._errors if r < self._done_round - 10_000]:
                del self._errors[old]  # rounds whose callers are long gone
        if error is not None:
            raise error
