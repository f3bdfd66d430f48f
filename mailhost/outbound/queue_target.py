"""The outbound queue as a delivery target (``IDeliveryTarget``) over any
``IOutboundQueue``.

The spool can hold a message: ``prepare`` makes message and envelope durable but keeps
them from the scheduler, ``commit`` releases them, and ``abort`` after ``prepare``
withdraws them from the spool. So a message for both local and remote recipients is
never relayed when its local copies fail, and the client's retry relays it once.
Only a crash between ``prepare`` and ``commit`` leaves a held message behind; the spool
then delivers it at the next start (at least once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailhost.message.target import IDeliveryTarget
from mailhost.outbound.interfaces import IOutboundQueue, QueueRecipient

log = Logger()


@implementer(IDeliveryTarget)
class QueueTarget:
    """Implements: IDeliveryTarget. One message into the spool, for remote recipients."""

    holds = True

    def __init__(self, queue: IOutboundQueue, sender: str,
                 recipients: Sequence[QueueRecipient], envid: str | None = None,
                 ret: str | None = None) -> None:
        self._queue = queue
        self._sender = sender
        self.recipients = list(recipients)
        self._envid = envid
        self._ret = ret
        self._writer: Any = None  # an IQueueWriter from begin() on
        self._held = False  # prepared: durable, waiting for commit or abort

    def begin(self) -> None:
        self._writer = self._queue.new_message(self._sender, envid=self._envid, ret=self._ret)

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def prepare(self) -> defer.Deferred:
        d = defer.maybeDeferred(self._writer.prepare, self.recipients)
        return d.addCallback(self._prepared)

    def _prepared(self, queue_id: str) -> str:
        self._held = True
        return queue_id

    def commit(self) -> None:
        if self._held:
            self._held = False
            self._writer.release()

    def abort(self) -> defer.Deferred | None:
        if self._held:
            self._held = False
            d = defer.maybeDeferred(self._writer.withdraw)
            return d.addErrback(
                lambda f: log.failure("queued copy not withdrawn; it will be relayed", f))
        if self._writer is not None:
            self._writer.abort()
        return None
