"""Group commit for the PostgreSQL store: the writes (deliveries, flag changes,
expunges: ``writes.py``) that arrive while one transaction commits go together in
the next.

Why: every delivery locks its folder's row to number its UIDs (sql.py), and holds
that lock until its commit has been flushed to disk. Deliveries into one mailbox,
one transaction each, therefore wait for each other's WAL flush in turn; measured
with ``bench/smtp_ingest.py --store postgresql`` (20 SMTP sessions into one mailbox,
durable cluster), the lock wait was almost all of the database time and the node
reached about 0.4x the Maildir store. One transaction for everything waiting costs
one lock, one numbering per folder and one flush for the whole batch, as the
Maildir store's own group commit does for its directory fsync.

One batch commits per node at a time (the next one forms meanwhile, and starts as
soon as the one before has committed, while that one's folders sync before its
callers hear back), at most ``MAX_BATCH`` writes each; a delivery to a folder that
does not exist fails alone (``writes.write_batch``), a database error fails the
whole batch (it rolled back: nothing of it was stored).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

#: Writes in one transaction at most (the deliveries' bodies are written in it).
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
        d.addCallbacks(self._settle, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))

    def _settle(self, results: Sequence[_Result | Exception],
                batch: list[tuple[_Item, defer.Deferred[_Result]]]) -> None:
        # Committed: the next batch may take the locks while this one's folders sync.
        self._busy = False
        self._next()
        done = [(item, r) for (item, _), r in zip(batch, results, strict=True)
                if not isinstance(r, Exception)]

        def fire(_: object) -> None:
            for (_item, waiter), result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    waiter.errback(Failure(result))
                else:
                    waiter.callback(result)

        defer.maybeDeferred(self._after, done).addBoth(fire)

    def _failed(self, failure: Failure,
                batch: list[tuple[_Item, defer.Deferred[_Result]]]) -> None:
        self._busy = False
        for _item, waiter in batch:
            waiter.errback(failure)
        self._next()
