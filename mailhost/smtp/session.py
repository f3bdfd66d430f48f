"""Per-connection SMTP state: who the client is, and the mail transaction in progress.

Kept apart from the protocol so that the state transitions RFC 5321 and RFC 3207
ask for (RSET, EHLO, STARTTLS forgetting everything) are one method each here.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

from mailhost.outbound.interfaces import QueueRecipient
from mailhost.smtp.params import Address, MailParams

_counter = itertools.count(1)
_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXZ"
# os.getpid() is a system call each time; asked once per process (issue 18).
_pid = os.getpid() & 0xFFF


def _forked() -> None:
    global _pid
    _pid = os.getpid() & 0xFFF


os.register_at_fork(after_in_child=_forked)


#: Every pair of digits, for two digits a division (issue 18: half the divmods).
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_BASE2 = len(_ALPHABET) ** 2


def new_transaction_id() -> str:
    """A short, unique-enough id for logs, Received headers and the 250 reply: the
    number below in base 30, most significant digit first."""
    n = (int(time.time() * 1000) << 20) | _pid << 8 | (next(_counter) & 0xFF)
    out = []
    while n:
        n, r = divmod(n, _BASE2)
        out.append(_PAIRS[r])
    return "".join(reversed(out)).lstrip("0")  # (the top pair's leading zero)


@dataclass
class Transaction:
    """One MAIL FROM ... DATA exchange."""

    id: str
    sender: Address
    params: MailParams
    # Local mailboxes (canonical user addresses) that get a stored copy, deduped, ordered.
    mailboxes: dict[str, None] = field(default_factory=dict)
    # Remote recipients for the outbound queue, keyed by canonical address (dedupe).
    remote: dict[str, QueueRecipient] = field(default_factory=dict)
    # Of those, the ones a local alias forwards to (the pipeline's ARC seal wants them).
    forwarded: dict[str, None] = field(default_factory=dict)
    # The first RCPTs as given (MAX_RESULTS), with the reply code each got, for the
    # transaction log; rcpt_count counts them all. A harvest of 10,000 RCPTs must not
    # make a 357 KB log line (or hold 10,000 strings).
    results: list[tuple[str, int]] = field(default_factory=list)
    rcpt_count: int = 0
    accepted: list[str] = field(default_factory=list)
    # Each accepted address's routing (its mailboxes, its queue recipient), for a
    # pipeline stage that removes recipients again (a milter's SMFIR_DELRCPT).
    # (Its queue recipients: the remote address, or what a local alias forwards to.)
    routes: dict[str, tuple[tuple[str, ...], tuple[QueueRecipient, ...]]] = field(
        default_factory=dict)
    # The message pipeline's view of this message (mailhost.message.stage), if any.
    context: Any = None
    # A recipient's mailbox had a quota limit at RCPT: the final dot asks again
    # (mailhost.smtp.quota.data_refusal); with none, it need not.
    quota_limited: bool = False

    MAX_RESULTS = 50

    def record(self, address: str, code: int) -> None:
        """Note one RCPT and its reply code."""
        self.rcpt_count += 1
        if len(self.results) < self.MAX_RESULTS:
            self.results.append((address[:200], code))

    @property
    def has_recipients(self) -> bool:
        return bool(self.mailboxes or self.remote)


@dataclass
class Session:
    """What we know about the client on one connection."""

    client_ip: str
    client_port: int
    tls: bool = False
    helo: str | None = None
    esmtp: bool = False
    user: str | None = None  # authenticated user address
    auth_mechanism: str = ""  # the SASL mechanism of that login (milter {auth_type})
    transaction: Transaction | None = None

    def reset_transaction(self) -> None:
        self.transaction = None

    def reset_after_tls(self) -> None:
        """RFC 3207 section 4.2: forget everything learned before the handshake."""
        self.helo = None
        self.esmtp = False
        self.user = None
        self.auth_mechanism = ""
        self.transaction = None

    @property
    def protocol_name(self) -> str:
        """The ``with`` clause of the Received header (RFC 3848 / RFC 6531)."""
        utf8 = self.transaction is not None and self.transaction.params.smtputf8
        if not self.esmtp:
            return "SMTP"
        name = "UTF8SMTP" if utf8 else "ESMTP"
        if self.tls:
            name += "S"
        if self.user:
            name += "A"
        return name
