"""What the scheduler hands a relay session and what it hears back: ``Job``s pulled
from a ``JobSource``, an ``Outcome`` per recipient, a ``SessionResult`` per connection.

Kept apart from the client (client.py) so the scheduler, the mail view's release and
the tests speak of jobs and outcomes without the SMTP state machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from twisted.internet import defer

from mailhost.outbound.envelope import Envelope, RecipientState
from mailhost.outbound.tlsrpt import TLSProblem

# Outcome kinds of one recipient.
DELIVERED = "delivered"
TEMPORARY = "temporary"
PERMANENT = "permanent"


def failure_kind(code: int) -> str | None:
    """TEMPORARY for a 4xx reply, PERMANENT for a 5xx one, None for anything else."""
    if 400 <= code < 500:
        return TEMPORARY
    if 500 <= code < 600:
        return PERMANENT
    return None


@dataclass
class Outcome:
    """What happened to one recipient in one attempt."""

    kind: str
    reply: str  # '250 2.0.0 ok', or a local description such as 'connection lost'
    # The remote accepted with DSN support: it reports success/failure from now on.
    dsn_passed: bool = False


@dataclass
class Job:
    """One message for the recipients of one domain: a single SMTP transaction."""

    envelope: Envelope
    domain: str
    recipients: list[RecipientState]
    path: str
    started: float = 0.0


class JobSource(Protocol):
    def next_job(self) -> Job | None: ...

    def job_done(self, job: Job, outcomes: dict[str, Outcome], info: dict[str, Any]) -> None: ...


@runtime_checkable
class WaitingJobSource(Protocol):
    """A source that can keep an idle connection: ``wait_job`` fires with True when
    a job may be ready, False after ``timeout`` seconds (or when stopping); cancel it
    when the connection goes away."""

    def next_job(self) -> Job | None: ...

    def job_done(self, job: Job, outcomes: dict[str, Outcome], info: dict[str, Any]) -> None: ...

    def wait_job(self, timeout: float) -> defer.Deferred: ...


@dataclass
class SessionResult:
    """How a connection went, for the caller's choice of the next MX host."""

    # The server got as far as a MAIL command (so jobs were pulled and reported).
    transacted: bool = False
    error: str = ""
    tls: bool = False
    tls_failed: bool = False
    jobs: int = 0
    # What the TLS check (DANE, MTA-STS) found wrong: an RFC 8460 result type and why.
    tls_problem: TLSProblem | None = None
