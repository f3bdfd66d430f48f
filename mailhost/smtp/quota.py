"""Mailbox quota at SMTP time: full mailboxes refused at RCPT, oversized mail at the end.

What Postfix with Dovecot's quota-status policy service answers, decided here from the
store's own count (``IQuotaStore``, an optional power of the store SMTP already has; no
lookup of the store's files from policy code):

- at RCPT, a local recipient whose mailbox is at or over its limit: ``452 4.2.2
  Mailbox full`` (temporary: the user may make room), and one whose limit is smaller
  than the ``SIZE=`` the client declared: ``552 5.2.2`` (it can never fit);
- at the end of the data, when no ``SIZE=`` said so before, a message larger than the
  whole quota of every local mailbox it is for (and with no remote recipient):
  ``552 5.2.2``. SMTP has one answer for the whole message there, so when only some
  of the recipients' quotas are too small it is delivered to all of them (as a
  delivery that merely crosses a limit is): refusing would fail the others too.

A recipient that reaches several mailboxes (an alias) is refused if any of them is.
A user without a limit costs nothing: the limit is asked first (synchronous), the
usage (a read of ``maildirsize`` in the store's thread pool) only when there is one.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import defer

from mailhost.smtp.reply import Reply
from mailhost.store.quota import IQuotaStore


def _too_big(mailbox: str) -> Reply:
    return Reply(552, "5.2.2", f"<{mailbox}>: Message is larger than the mailbox quota")


async def _rcpt(store: IQuotaStore, mailboxes: Sequence[str], size: int | None) -> Reply | None:
    for mailbox in mailboxes:
        limit = store.quota_limit(mailbox)
        if not limit:
            continue
        if size is not None and size > limit:
            return _too_big(mailbox)
        usage = await store.quota(mailbox)
        if usage.full:
            return Reply(452, "4.2.2", f"<{mailbox}>: Mailbox full")
    return None


def rcpt_refusal(store: object, mailboxes: Sequence[str],
                 size: int | None) -> defer.Deferred[Reply | None] | None:
    """None when there is nothing to ask (no quota store, no limit), else a Deferred
    firing with the refusal of this recipient's ``mailboxes`` or None."""
    if not IQuotaStore.providedBy(store) or not any(store.quota_limit(m) for m in mailboxes):
        return None
    return defer.Deferred.fromCoroutine(_rcpt(store, mailboxes, size))


def data_refusal(store: object, mailboxes: Sequence[str], remote: bool,
                 size: int) -> Reply | None:
    """552 5.2.2 when the message is larger than the whole quota of every local
    mailbox it goes to and goes nowhere else; else None."""
    if remote or not mailboxes or not IQuotaStore.providedBy(store):
        return None
    limits = [store.quota_limit(m) for m in mailboxes]
    if all(limit and size > limit for limit in limits):
        return _too_big(mailboxes[0]) if len(mailboxes) == 1 else Reply(
            552, "5.2.2", "Message is larger than the mailbox quota")
    return None
