"""The contract of the operator's view over stored mail.

One implementation sits on ``IMailStore`` (so it works on Maildir, memory and, later,
PostgreSQL); the web UI/REST API and the test host's helpers (``messages_for_domain``,
``purge``, release) use only this interface.

Message ids are opaque, URL-safe strings that stay valid while the message exists
(they encode mailbox, folder, UIDVALIDITY and UID); a deleted or renumbered message
gives ``NoSuchMessageId``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from twisted.internet.defer import Deferred
from zope.interface import Interface


class NoSuchMessageId(KeyError):
    """The id names no stored message (deleted, or never existed)."""


@dataclass(frozen=True)
class MessageSummary:
    """What a list view shows of one stored message, without reading its body."""

    id: str
    mailbox: str  #: the account (a full address) the message is stored for
    folder: str  #: store folder name, ``INBOX`` for the inbox
    uid: int
    size: int
    received: datetime  #: internal date (time of delivery), timezone-aware UTC
    sender: str | None  #: envelope sender from ``Return-Path``, ``""`` for a null sender
    from_: str | None  #: the ``From:`` header as decoded text
    to: tuple[str, ...]  #: addresses in ``To:`` and ``Cc:``
    subject: str | None
    flags: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class MessageQuery:
    """A conjunction of filters; ``None`` means "any". Text matches are case-insensitive substrings."""

    mailbox: str | None = None  #: exact account address
    domain: str | None = None  #: every mailbox of this domain
    folder: str | None = None
    sender: str | None = None  #: envelope sender or ``From:``
    recipient: str | None = None  #: mailbox, ``To:`` or ``Cc:``
    subject: str | None = None
    body: str | None = None  #: decoded text of the message's text parts
    text: str | None = None  #: any of the above
    since: datetime | None = None  #: received at or after
    before: datetime | None = None  #: received before
    limit: int | None = None  #: newest first, at most this many


class IMailView(Interface):
    """Every mailbox of a host, for an operator rather than a mail user."""

    def mailboxes() -> Deferred[list[str]]:
        """The accounts that exist, sorted."""

    def messages(query: MessageQuery | None = None) -> Deferred[list[MessageSummary]]:
        """Messages matching ``query``, newest first."""

    def summary(message_id: str) -> Deferred[MessageSummary]:
        """One message's summary; fails with ``NoSuchMessageId``."""

    def raw(message_id: str) -> Deferred[bytes]:
        """The message exactly as stored (CRLF line ends); fails with ``NoSuchMessageId``."""

    def delete(message_id: str) -> Deferred[None]:
        """Remove one message for good; fails with ``NoSuchMessageId``."""

    def purge(query: MessageQuery | None = None) -> Deferred[int]:
        """Remove every message matching ``query`` (all when ``None``); returns how many."""

    def release(message_id: str, endpoint: str, recipients: Sequence[str] | None = None,
                sender: str | None = None) -> Deferred[None]:
        """Send a stored message, byte for byte, to the SMTP server at a Twisted client
        endpoint string (``tcp:host=127.0.0.1:port=2525``), to ``recipients`` (default:
        its mailbox) from ``sender`` (default: its envelope sender)."""

    def subscribe(listener: Callable[[MessageSummary], None]) -> Callable[[], None]:
        """Call ``listener`` for every message stored from now on; returns the unsubscribe."""
