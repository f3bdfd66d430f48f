"""How a ``MessageQuery`` matches: cheap filters (mailbox, domain, folder, date) on
the index, header filters on a summary, and the body filter on decoded text.

Text matches are case-insensitive substrings (``str.casefold``); ``text`` matches if
any of sender, recipient, subject or body does. Split so the view reads headers only
for what the index let through, and bodies only for what the headers let through.
"""

from __future__ import annotations

from datetime import UTC, datetime

from mailhost.mailview.interfaces import MessageQuery, MessageSummary


def _has(needle: str, *haystacks: str | None) -> bool:
    folded = needle.casefold()
    return any(h is not None and folded in h.casefold() for h in haystacks)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def mailbox_matches(query: MessageQuery, mailbox: str) -> bool:
    if query.mailbox is not None and mailbox != query.mailbox.strip().lower():
        return False
    if query.domain is not None and domain_of(mailbox) != query.domain.strip().lower().rstrip("."):
        return False
    return True


def aware(when: datetime) -> datetime:
    """A naive datetime is taken as UTC, so it compares with the view's dates."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def date_matches(query: MessageQuery, received: datetime) -> bool:
    if query.since is not None and received < aware(query.since):
        return False
    if query.before is not None and received >= aware(query.before):
        return False
    return True


def header_matches(query: MessageQuery, summary: MessageSummary) -> bool:
    """Every header filter holds (``text`` excepted: it may still match the body)."""
    if query.sender is not None and not _has(query.sender, summary.sender, summary.from_):
        return False
    if query.recipient is not None and not _has(query.recipient, summary.mailbox, *summary.to):
        return False
    if query.subject is not None and not _has(query.subject, summary.subject):
        return False
    return True


def text_in_headers(query: MessageQuery, summary: MessageSummary) -> bool:
    assert query.text is not None
    return _has(query.text, summary.sender, summary.from_, summary.mailbox, *summary.to,
                summary.subject)


def needs_body(query: MessageQuery, summary: MessageSummary) -> bool:
    """Whether the body must be read to decide (a body filter, or ``text`` not found
    in the headers)."""
    return query.body is not None or (query.text is not None
                                      and not text_in_headers(query, summary))


def body_matches(query: MessageQuery, summary: MessageSummary, body: str) -> bool:
    if query.body is not None and not _has(query.body, body):
        return False
    if query.text is not None and not (text_in_headers(query, summary) or _has(query.text, body)):
        return False
    return True
