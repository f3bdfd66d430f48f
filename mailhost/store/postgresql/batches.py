"""Group commit for the PostgreSQL store: the deliveries that arrive while one
transaction commits go together in the next.

Why: every delivery locks its folder's row to number its UIDs (sql.py), and holds
that lock until its commit has been flushed to disk. Deliveries into one mailbox,
one transaction each, therefore wait for each other's WAL flush in turn; measured
with ``bench/smtp_ingest.py --store postgresql`` (20 SMTP sessions into one mailbox,
durable cluster), the lock wait was almost all of the database time and the node
reached about 0.4x the Maildir store. One transaction for everything waiting costs
one lock, one numbering per folder and one flush for the whole batch, as the
Maildir store's own group commit does for its directory fsync.

One batch is in flight per node at a time (the next one forms meanwhile), at most
``MAX_BATCH`` deliveries each; a delivery to a folder that does not exist fails
alone (``sql.deliver_batch``), a database error fails the whole batch (it rolled
back: nothing of it was stored).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

#: Deliveries in one transaction at most (their bodies are written in it).
MAX_BATCH = 64


class GroupCommit(Generic[_Item, _Result]):
    """Runs ``commit(items)`` (a Deferred of one result or exception per item, in
    order) for batches of submitted items, one batch at a time, then ``after(done)``
    with the (item, result) pairs that succeeded before any item's Deferred fires (the
    store syncs the folders it wrote there)."""

    def __init__(self, commit: Callable[[list[_Item]], defer.Deferred[Sequence[_Result | Exception]]],
                 after: Callable[[list[tuple[_Item, _Result]]], defer.Deferred[object]]) -> None:
        self._commit = commit
        self._after = after
        self._waiting: list[tuple[_Item, defer.Deferred[_Result]]] = []
        self._busy = False

    def submit(self, item: _Item) -> defer.Deferred[_Result]:
        """Deferred firing with the item's result once its batch has committed."""
        d: defer.Deferred[_Result] = defer.Deferred()
        self._waiting.append((item, d))
        self._next()
        return d

    def _next(self) -> None:
        if self._busy or not self._waiting:
            return
        batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        self._busy = True
        d = self._commit([item for item, _ in batch])
        d.addCallback(self._settle, batch)
        d.addErrback(self._failed, batch)

    def _settle(self, results: Sequence[_Result | Exception],
                batch: list[tuple[_Item, defer.Deferred[_Result]]]) -> defer.Deferred[None]:
        done = [(item, r) for (item, _), r in zip(batch, results, strict=True)
                if not isinstance(r, Exception)]
        d = self._after(done)

        def fire(_: object) -> None:
            self._busy = False
            for (_item, waiter), result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    waiter.errback(Failure(result))
                else:
                    waiter.callback(result)
            self._next()

        d.addBoth(fire)
        return d  # type: ignore[return-value]

    def _failed(self, failure: Failure,
                batch: list[tuple[_Item, defer.Deferred[_Result]]]) -> None:
        self._busy = False
        for _item, waiter in batch:
            if not waiter.called:
                waiter.errback(failure)
        self._next()
