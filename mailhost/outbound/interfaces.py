"""The seam between SMTP reception and the outbound queue.

SMTP (submission, or a trusted relay network) streams a message for remote
recipients into a queue writer, exactly as it streams local mail into the store;
``commit`` fires only once the spool file and its envelope are durable, and only
then does SMTP answer 250. SMTP reaches the writer through ``queue_target.QueueTarget``,
the queue's ``IDeliveryTarget`` (``prepare`` holds, ``abort`` withdraws).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from zope.interface import Attribute, Interface


@dataclass(frozen=True)
class QueueRecipient:
    """One remote recipient, with its RFC 3461 DSN parameters."""

    address: str
    # Subset of {"SUCCESS", "FAILURE", "DELAY"}, or {"NEVER"}; empty means the default
    # (FAILURE and DELAY).
    notify: frozenset[str] = field(default_factory=frozenset)
    orcpt: str | None = None


class IQueueWriter(Interface):
    """A message on its way into the spool."""

    size = Attribute("Octets written so far.")

    def write(data: bytes) -> None:
        """Append message bytes (CRLF line ends, already dot-unstuffed)."""

    def commit(recipients: Sequence[QueueRecipient]) -> object:
        """Deferred firing with the queue id once message and envelope are fsynced;
        the message is then handed to delivery. Same as ``prepare`` + ``release``."""

    def prepare(recipients: Sequence[QueueRecipient]) -> object:
        """Like ``commit``, but the durable message waits for ``release`` or
        ``withdraw``: SMTP keeps it back while the local copies commit, so a failure
        there (a 4xx, then the client's retry) does not relay it twice. After a crash
        in between, the spool delivers it (at least once)."""

    def release() -> None:
        """Hand a prepared message to delivery."""

    def withdraw() -> object:
        """Deferred: take a prepared message out of the spool, never delivered."""

    def abort() -> None:
        """Discard; idempotent."""


class IOutboundQueue(Interface):
    """The durable outbound queue."""

    def new_message(sender: str, envid: str | None = None, ret: str | None = None) -> IQueueWriter:
        """Start spooling a message from ``sender`` ('' is the null sender <>).
        ``ret`` is the DSN RET parameter ('FULL' or 'HDRS')."""
