"""A message on its way to its delivery targets: the local store and the outbound queue.

Like maddy's delivery transaction (start, body, commit/abort): the protocol opens one
of these at DATA, streams body chunks in as they arrive, and commits at the final
dot. Local copies get ``Return-Path`` and ``Received``; the queued copy gets only
``Received`` (Return-Path belongs to final delivery). Commit fires only when every
copy is durable, which is when the protocol may say 250.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from mailhost.outbound.interfaces import QueueRecipient
from mailhost.store.interfaces import DeliveryTarget

log = Logger()


class Delivery:
    """Writers for one transaction; ``write`` fans out, ``commit``/``abort`` finish."""

    def __init__(self, store, queue, sender: str, mailboxes: list[str],
                 remote: list[QueueRecipient], received: bytes, envid: str | None = None,
                 ret: str | None = None) -> None:
        self.mailboxes = mailboxes
        self.remote = remote
        self._store_writer = None
        self._queue_writer = None
        self._prepared = False  # the queued copy is durable, held until the store commits
        self._finished = False
        try:
            if mailboxes:
                self._store_writer = store.new_message()
                self._store_writer.write(f"Return-Path: <{sender}>\r\n".encode() + received)
            if remote:
                self._queue_writer = queue.new_message(sender, envid=envid, ret=ret)
                self._queue_writer.write(received)
        except BaseException:
            self.abort()
            raise

    def write(self, data: bytes) -> None:
        if self._store_writer is not None:
            self._store_writer.write(data)
        if self._queue_writer is not None:
            self._queue_writer.write(data)

    def commit(self) -> defer.Deferred:
        """Deferred firing with the queue id (or None) once every copy is durable.

        With both kinds of recipient the queued copy is prepared first (durable, held),
        then the local copies commit, then the queued copy is released to delivery.
        If either step fails everything is taken back and the client's retry brings
        the whole message again, with no duplicate on either side. (Plain callbacks,
        not inlineCallbacks: this runs once per message on the ingest hot path.)
        """
        self._finished = True
        if self._queue_writer is not None and self._store_writer is not None:
            d = defer.maybeDeferred(self._queue_writer.prepare, self.remote)
            d.addCallback(self._prepared_then_store)
        elif self._queue_writer is not None:
            d = defer.maybeDeferred(self._queue_writer.commit, self.remote)
        elif self._store_writer is not None:
            d = defer.maybeDeferred(self._commit_store, None)
        else:
            return defer.succeed(None)
        return d.addErrback(self._commit_failed)

    def _prepared_then_store(self, queue_id: str) -> defer.Deferred:
        self._prepared = True
        d = self._commit_store(queue_id)

        def release(qid: str) -> str:
            self._prepared = False
            self._queue_writer.release()
            return qid

        return d.addCallback(release)

    def _commit_store(self, queue_id: str | None) -> defer.Deferred:
        # No UID wanted: the store numbers the copies after the 250 (see want_uid).
        targets = [DeliveryTarget(user=m, want_uid=False) for m in self.mailboxes]
        d = defer.maybeDeferred(self._store_writer.commit, targets)
        return d.addCallback(lambda _: queue_id)

    def _commit_failed(self, failure):
        self._abort_writers()
        if not self._prepared:
            return failure
        self._prepared = False
        d = defer.maybeDeferred(self._queue_writer.withdraw)
        d.addErrback(lambda f: log.failure("queued copy not withdrawn; it will be relayed", f))
        return d.addCallback(lambda _: failure)

    def _abort_writers(self) -> None:
        for w in (self._store_writer, self._queue_writer):
            if w is not None:
                try:
                    w.abort()
                except Exception:  # abort must never mask the original failure
                    pass

    def abort(self) -> None:
        """Throw everything away; idempotent; a no-op once commit started."""
        if self._finished:
            return
        self._finished = True
        self._abort_writers()
