"""What the web UI needs from its host besides the mail view (``IMailView``).

``IQueueListing`` lists the outbound queue (the spool of a real host, the captured
mail of a test host); ``IFaultControl`` lists, adds and clears the scripted faults of
``mailhost.testing.faults``. Both are plain reads and writes of in-memory state, so
they return values, not Deferreds. ``service.py`` hands them to the web UI; the web UI
reaches nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from zope.interface import Interface

if TYPE_CHECKING:
    from mailhost.testing.faults.registry import Fault


@dataclass(frozen=True)
class QueuedRecipient:
    """One recipient of a queued message and where its delivery stands."""

    address: str
    status: str  #: "pending", "delivered", "failed" or "captured"
    attempts: int = 0
    last_error: str = ""
    next_attempt: datetime | None = None


@dataclass(frozen=True)
class QueuedMessage:
    """One message in the outbound queue."""

    id: str
    sender: str
    recipients: tuple[QueuedRecipient, ...]
    arrival: datetime
    size: int


class IQueueListing(Interface):
    """The outbound queue, for display."""

    def queued() -> list[QueuedMessage]:
        """Every message in the queue, oldest first."""


class FaultError(ValueError):
    """A fault that cannot be scripted (unknown protocol or action, bad value)."""


class IFaultControl(Interface):
    """The scripted faults of a host (``mailhost.testing.faults``)."""

    def faults() -> list[Fault]:
        """Every fault still registered, in the order they were added."""

    def add(protocol: str, action: str, command: str, *, code: int | None = None,
            message: str | None = None, match: str | None = None, times: int | None = 1,
            seconds: float = 0.0) -> Fault:
        """Script one fault (``action``: "fail", "delay" or "drop_after"); raises
        ``FaultError`` for what cannot be scripted."""

    def clear() -> int:
        """Remove every fault; returns how many there were."""
