"""Per-user storage quota (RFC 9208's one quota root per user): the contract.

The limit is a number of octets per user, 0 meaning none. The store does not know
where limits come from (the passwd file's ``quota=`` field, the ``[store]
default_quota``): the composition root hands it a function from user to limit
(``IQuotaStore.set_quota_limits``), so a passwd edit applies at the next check. What
the store keeps is the *usage*, incrementally (the Maildir store: Maildir++'s
``maildirsize``, which Courier, maildrop and Dovecot's ``quota = maildir`` share).

Who enforces what: IMAP refuses an APPEND or COPY that would take the user past the
limit (``NO [OVERQUOTA]``); SMTP refuses a recipient already at or over it (452 4.2.2)
and a message bigger than the whole quota (552 5.2.2). A delivery that merely crosses
the limit is taken (as Dovecot's default grace does), so the last message before a
full mailbox is never bounced for being a few octets too big.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from zope.interface import Interface

#: user -> storage limit in octets (0: unlimited).
QuotaLimits = Callable[[str], int]

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
_SIZE = re.compile(r"\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Octets of a size as the passwd file and the config write it: ``500M``, ``2G``,
    ``10240``, ``64K`` (binary units; ``0`` or empty: unlimited). ValueError if not."""
    if not text.strip():
        return 0
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (expected e.g. 500M, 2G, 0)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def format_size(octets: int) -> str:
    """The shortest exact spelling ``parse_size`` reads back (``512M``, ``1536K``)."""
    for unit in ("T", "G", "M", "K"):
        if octets and octets % _UNITS[unit] == 0:
            return f"{octets // _UNITS[unit]}{unit}"
    return str(octets)


@dataclass(frozen=True)
class QuotaUsage:
    """One quota root's usage and limits (a limit of 0 is no limit)."""

    storage: int  # octets used
    messages: int  # messages stored
    storage_limit: int = 0
    message_limit: int = 0

    def room_for(self, octets: int, messages: int = 1) -> bool:
        """True if ``messages`` more messages of ``octets`` in all fit under the limits."""
        if self.storage_limit and self.storage + octets > self.storage_limit:
            return False
        return not (self.message_limit and self.messages + messages > self.message_limit)

    @property
    def full(self) -> bool:
        """At or over a limit: nothing more may come in."""
        return bool((self.storage_limit and self.storage >= self.storage_limit)
                    or (self.message_limit and self.messages >= self.message_limit))


class IQuotaRoot(Interface):
    """An ``IMailAccount`` whose storage is counted against a quota (optional power,
    tested with ``providedBy``): the user's one quota root."""

    def quota() -> Deferred[QuotaUsage]:
        """Deferred firing with the account's usage and limits, from the store's
        running count (never a walk of every folder, except when the count must be
        rebuilt)."""

    def quota_limit() -> int:
        """The storage limit in octets, 0 for none (synchronous, cheap): lets a
        caller that only enforces limits skip reading the usage when there is none."""


class IQuotaStore(Interface):
    """An ``IMailStore`` that counts usage per user (optional power)."""

    def set_quota_limits(limits: QuotaLimits) -> None:
        """Where limits come from from now on (the composition root's call)."""

    def quota_limit(user: str) -> int:
        """The storage limit of ``user`` in octets, 0 for none (synchronous, cheap)."""

    def quota(user: str) -> Deferred[QuotaUsage]:
        """Deferred firing with ``user``'s usage and limits (SMTP asks at RCPT)."""
