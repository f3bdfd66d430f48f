"""Batched thread hops for the spool: blocking file operations off the reactor thread.

Each thread hop costs the reactor a queue hand-off, a wake-up and a few Deferreds, and
the GIL-bound reactor is what limits relay throughput. So ``SpoolBatches`` runs at most
``BATCHES_IN_FLIGHT`` batches at once; operations asked for meanwhile wait and go
together in the next one, which also fsyncs each directory once for all of them (group
commit). ``SpoolWorkers`` are the threads the batches run on.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: Batches of spool operations in worker threads at once (see ``SpoolBatches``).
BATCHES_IN_FLIGHT = 2

#: An operation run in a batch: called with its arguments in a worker thread, it
#: returns ``(result, directories to fsync)``.
Op = Callable[..., tuple[Any, Iterable[str]]]


class SpoolWorkers:
    """Threads that run spool batches, started on demand, gone after ``idle`` seconds.

    A hop through the reactor's thread pool costs the reactor thread its team
    coordination, context and Deferred plumbing (about 7% of a relaying host's GIL
    time in the relay benchmark); here a hop is a deque append, a notify and one
    ``callFromThread`` back. The threads are daemons so an idle one never holds the
    process open; work in flight is waited for by ``SpoolBatches.drain`` (stopService).
    """

    def __init__(self, count: int, reactor: Any = None, idle: float = 10.0) -> None:
        self._cond = threading.Condition()
        self._jobs: deque[tuple[Callable[[], Any], Callable[[Any], None]]] = deque()
        self._count = count
        self._idle = idle
        self._threads = 0
        self._waiting = 0
        self.reactor = reactor

    def submit(self, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        """Run ``work()`` in a worker; ``done`` gets its result or Failure in the reactor.

        Call from the reactor thread. If no worker can be started (thread limit,
        memory), ``done`` gets the Failure at once rather than never.
        """
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        job = (work, done)
        failure = None
        with self._cond:
            self._jobs.append(job)
            if self._waiting:
                self._cond.notify()
                return
            if self._threads >= self._count:
                return  # a busy worker takes it next
            self._threads += 1
            try:
                threading.Thread(target=self._loop, name="mailhost-spool", daemon=True).start()
            except BaseException:
                failure = Failure()
                self._threads -= 1
                if self._threads:
                    failure = None  # a running worker takes the job
                else:
                    self._jobs.remove(job)
        if failure is not None:
            log.failure("outbound spool: no worker thread", failure)
            done(failure)

    def wake_idle(self) -> None:
        """Let idle workers exit now instead of after ``idle`` seconds."""
        with self._cond:
            self._cond.notify_all()

    def _loop(self) -> None:
        reactor = self.reactor
        while True:
            with self._cond:
                if not self._jobs:
                    self._waiting += 1
                    self._cond.wait(self._idle)
                    self._waiting -= 1
                if not self._jobs:
                    self._threads -= 1
                    return
                work, done = self._jobs.popleft()
            try:
                result: Any = work()
            except BaseException:
                result = Failure()
            reactor.callFromThread(done, result)


class SpoolBatches:
    """Runs spool operations in worker threads, in batches with one fsync per directory.

    ``sync_dirs`` (thread side) makes a batch's directories durable; if it fails, every
    operation that needed it fails too, and ``undo(op, args)`` is called for each so it
    can take back what it did (a message renamed into place must not stay, or it would
    be delivered although its client was told to retry). ``reactor`` is where results
    are reported (the global one if None).
    """

    def __init__(
        self,
        sync_dirs: Callable[[set[str]], None],
        undo: Callable[[Op, tuple[Any, ...]], None],
        reactor: Any = None,
    ) -> None:
        self._sync_dirs = sync_dirs
        self._undo = undo
        self._waiting: list[tuple[Op, tuple[Any, ...], defer.Deferred]] = []
        self._in_flight = 0
        self._workers = SpoolWorkers(BATCHES_IN_FLIGHT, reactor)
        self._drained: list[defer.Deferred] = []
        self.count = 0  # batches started, for tests and benchmarks

    @property
    def reactor(self) -> Any:
        """The reactor the threads report to (None: the global one, once used)."""
        return self._workers.reactor

    def run(self, op: Op, *args: Any) -> defer.Deferred:
        """Run ``op(*args)`` in a thread, together with the operations asked for
        meanwhile; the Deferred fires with its result once its directories are synced."""
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((op, args, d))
        if self._in_flight < BATCHES_IN_FLIGHT:
            self._start_batch()
        return d

    def drain(self) -> defer.Deferred:
        """Fires once no batch runs or waits, so stopping loses no spool operation
        to the interpreter exit (the worker threads are daemons)."""
        if not self._in_flight and not self._waiting:
            self._workers.wake_idle()
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred(lambda d: self._drained.remove(d))
        self._drained.append(d)
        return d

    def _start_batch(self) -> None:
        batch, self._waiting = self._waiting, []
        self._in_flight += 1
        self.count += 1
        ops = [(op, args) for op, args, _ in batch]
        self._workers.submit(lambda: self._batch_sync(ops), lambda r: self._batch_done(r, batch))

    def _batch_done(self, results: Any, batch: list[tuple[Any, Any, defer.Deferred]]) -> None:
        self._in_flight -= 1
        if self._waiting and self._in_flight < BATCHES_IN_FLIGHT:
            self._start_batch()
        if isinstance(results, Failure):  # the batch machinery itself failed
            results = [(False, results)] * len(batch)
        for (_op, _args, d), (ok, value) in zip(batch, results, strict=True):
            if ok:
                d.callback(value)
            else:
                d.errback(value)
        if self._drained and not self._in_flight and not self._waiting:
            self._workers.wake_idle()
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def _batch_sync(self, ops: list[tuple[Op, tuple[Any, ...]]]) -> list:
        """Thread side of a batch: each operation, then one fsync per directory."""
        done: list[tuple[bool, Any, tuple[str, ...]]] = []
        dirs: set[str] = set()
        for op, args in ops:
            try:
                value, need = op(*args)
            except Exception:
                done.append((False, Failure(), ()))
                continue
            dirs.update(need)
            done.append((True, value, tuple(need)))
        if dirs:
            try:
                self._sync_dirs(dirs)
            except Exception:
                failure = Failure()
                out: list[tuple[bool, Any]] = []
                for (op, args), (ok, value, need) in zip(ops, done, strict=True):
                    if not need:
                        out.append((ok, value))
                        continue
                    self._undo(op, args)
                    out.append((False, failure))
                return out
        return [(ok, value) for ok, value, _ in done]
