"""``SpoolListing``: the outbound spool of a running host as an ``IQueueListing``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from zope.interface import implementer

from mailhost.web.interfaces import IQueueListing, QueuedMessage, QueuedRecipient


def _when(ts: float) -> datetime | None:
    return datetime.fromtimestamp(ts, tz=UTC) if ts else None


@implementer(IQueueListing)
class SpoolListing:
    """Implements: IQueueListing over the envelopes an ``OutboundService``'s scheduler
    holds (every message of the spool once it has started)."""

    def __init__(self, outbound: Any) -> None:
        self.outbound = outbound

    def queued(self) -> list[QueuedMessage]:
        scheduler = self.outbound.scheduler
        if scheduler is None:
            return []
        out = []
        for env in sorted(scheduler.envelopes.values(), key=lambda e: (e.arrival, e.id)):
            out.append(QueuedMessage(
                id=env.id, sender=env.sender, size=env.size,
                arrival=_when(env.arrival) or datetime.now(UTC),
                recipients=tuple(QueuedRecipient(r.address, r.status, r.attempts,
                                                 r.last_error, _when(r.next_attempt))
                                 for r in env.recipients)))
        return out
