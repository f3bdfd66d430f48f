"""Calls that wait for a folder's lock together run as one pass.

Under a 10-client IMAP load (issue 16) every STORE, EXPUNGE and \\Recent claim queued
on the folder lock with one thread hop each. A call that arrives while a pass is
still waiting for the lock joins that pass instead; once the pass starts, the next
call starts a pass of its own. The pass gets the requests in the order they came.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

R = TypeVar("R", bound=tuple[Any, ...])


def fail_waiters(batch: list[Any], failure: Failure) -> None:
    """The default for a pass that could not run: each caller (the request's last
    item, a Deferred) gets the failure."""
    for *_, waiter in batch:
        if not waiter.called:
            waiter.errback(failure)


class LockPasses(Generic[R]):
    """``join(request)``: run ``work(batch)`` through ``run`` (the folder's lock),
    with every request that came while it waited (see the module)."""

    def __init__(self, run: Callable[..., defer.Deferred[None]],
                 work: Callable[[list[R]], Awaitable[None]],
                 failed: Callable[[list[R], Failure], None] = fail_waiters) -> None:
        self._run = run
        self._work = work
        self._failed = failed
        self._waiting: list[R] | None = None

    def join(self, request: R) -> None:
        if self._waiting is not None:
            self._waiting.append(request)  # not started yet: it takes this one too
            return
        batch = self._waiting = [request]

        def failed(f: Failure) -> None:
            if self._waiting is batch:  # it never ran (folder gone)
                self._waiting = None
            self._failed(batch, f)

        self._run(self._pass, batch).addErrback(failed)

    async def _pass(self, batch: list[R]) -> None:
        if self._waiting is batch:
            self._waiting = None  # running: a later call starts a pass of its own
        await self._work(batch)
