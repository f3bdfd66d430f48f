"""``IDeliveryTarget``: one destination of a message, as a two-phase transaction.

Like maddy's delivery (start, body, commit/abort): the receiving side opens a target
per destination, streams the message into every one, and answers the sender only once
every target has made its copy durable. Mailbox delivery
(``mailhost.store.mailbox_target.MailboxTarget``) and the outbound queue
(``mailhost.outbound.queue_target.QueueTarget``) implement it; ``mailhost.smtp.delivery
.Delivery`` coordinates any number of them.

The two phases let several targets act as one: ``prepare`` makes a copy durable but
holds it back, so a later failure can still take it back with ``abort`` and the
client's retry brings no duplicate; ``commit`` then lets every held copy go. A target
whose ``prepare`` cannot hold (a copy in a mailbox is visible at once) says so with
``holds = False``; the coordinator prepares it after every target that can hold.

(Not to be confused with ``mailhost.store.interfaces.DeliveryTarget``, which names one
folder a store copy goes to.)
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IDeliveryTarget(Interface):
    """One destination of one message: begin, write, prepare, commit, or abort."""

    holds = Attribute(
        "True if ``prepare`` keeps the durable copy back until ``commit`` (so ``abort`` "
        "after ``prepare`` still withdraws it); False if ``prepare`` already delivers.")

    def begin() -> None:
        """Open the copy and write what this target adds in front of the message (a
        mailbox adds ``Return-Path:``). Raises if the copy cannot be started."""

    def write(data: bytes) -> None:
        """Append message bytes (CRLF line ends, already dot-unstuffed)."""

    def prepare() -> object:
        """Deferred firing once the copy is durable: with an id worth naming in a reply
        (the queue id) or None."""

    def commit() -> None:
        """Let a prepared copy go (a held queue entry is handed to delivery). Must not
        fail: everything that can fail happened in ``prepare``."""

    def abort() -> object:
        """Throw the copy away: before ``prepare`` it is discarded; after a holding
        ``prepare`` it is withdrawn. None, or a Deferred firing when done. Idempotent;
        a no-op after ``commit``."""
