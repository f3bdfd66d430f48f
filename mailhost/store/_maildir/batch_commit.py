"""BatchCommitter: the deliveries waiting to commit go to the thread pool together.

Each message used to take its own worker thread through ``deliver_files`` and wait in
the group commit (``GroupSync``) for a directory fsync round. Under load (20 SMTP
sessions) that kept up to 20 threads busy at once, and their hand-offs of the GIL,
the condition variable that woke every one of them for every round and a
``callFromThread`` per message cost more system time than the messages' own file
work (measured: ``futex`` was the largest system call by CPU).

Here the reactor queues each commit; at most ``limit`` thread-pool jobs run at a time,
each taking every commit queued when it starts (``maildir_io.deliver_batch``: the
files one after another, then one group-commit round for all of them) and firing their
Deferreds together when it is back. A lone message still goes at once, in a batch of
one; concurrent ones share hops and rounds. A few jobs in flight keep several file
fsyncs outstanding, which the file system's journal commits together.

Why two jobs, not four (issue 18): every job is a Python thread, and each of its
system calls gives the GIL up and takes it back, against the reactor and against the
other jobs. Measured at 20 sessions x 4 KiB (``perf stat`` of the server, per
message): 4 jobs 39 futex calls, 27 context switches and 85 system calls; 3 jobs 25,
21, 71; 2 jobs 16, 16, 61; 1 job 4, 11, 48, but a single job fsyncs one file after
another and its throughput fell to half. Two jobs keep fsyncs overlapping (a job
that waits for the disk lets the other's files through) and their batches grow with
the disk's latency.

Why the second job waits for ``SECOND_JOB_AT`` commits (issue 18): started for every
commit that found one job running, it mostly took one or two messages, so batches
averaged under 3 messages, and each batch is a thread hop, a directory fsync round
and a GIL contest of its own. Now what arrives while one job runs waits for it,
unless that many have piled up (the disk is slow: then the overlap pays). Measured
(``bench/smtp_ingest.py --load 0 --only mailhost,aiosmtpd --runs 5 --scale 0.5``,
this against a start for every commit in the same runs, load 19-21): server CPU per
message 1.09 vs 1.19 ms (lower in all 5 pairs), 300 vs 229 msg/s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from mailhost.groupsync import GroupSync
from mailhost.store._maildir.maildir_io import BatchJob, deliver_batch

#: Thread-pool jobs committing at once (each a batch of messages).
DEFAULT_LIMIT = 2
#: Commits that must be waiting before a job starts beside one already running.
SECOND_JOB_AT = 6


class BatchCommitter:
    """Queue of single-message commits, run in batches of whatever is waiting."""

    def __init__(self, run_blocking: Callable[..., defer.Deferred[Any]],
                 syncer: Callable[[], GroupSync | None], limit: int = DEFAULT_LIMIT) -> None:
        self._run_blocking = run_blocking
        self._syncer = syncer
        self._limit = limit
        self._waiting: list[tuple[BatchJob, defer.Deferred[None]]] = []
        self._running = 0

    def commit(self, job: BatchJob) -> defer.Deferred[None]:
        """Deferred firing once ``job``'s message is durable (see ``deliver_files``)."""
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append((job, d))
        self._maybe_start()
        return d

    def _maybe_start(self) -> None:
        if self._running == 0 or (self._running < self._limit
                                  and len(self._waiting) >= SECOND_JOB_AT):
            self._start()

    def _start(self) -> None:
        batch, self._waiting = self._waiting, []
        self._running += 1
        d = self._run_blocking(deliver_batch, [job for job, _ in batch], self._syncer())
        d.addBoth(self._done, [waiter for _, waiter in batch])

    def _done(self, results: Any, waiters: list[defer.Deferred[None]]) -> None:
        self._running -= 1
        if self._waiting:
            self._maybe_start()  # what queued meanwhile goes before these callbacks run
        for i, waiter in enumerate(waiters):
            if isinstance(results, Failure):
                waiter.errback(results)
            elif results[i] is None:
                waiter.callback(None)
            else:
                waiter.errback(Failure(results[i]))
