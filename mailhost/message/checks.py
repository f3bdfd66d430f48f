"""SMTP-phase checks: ``IEnvelopeCheck`` and ``EnvelopeChecks``, their order.

The message pipeline (``mailhost.message.stage``) judges a message once it is in.
Some decisions belong earlier, where Postfix makes them, so that no body is taken
for a message that will be refused: DNSBLs and greylisting answer at RCPT
(``reject_rbl_client``, a policy service), a sender's hourly limit at MAIL FROM, and
the client's name (forward-confirmed reverse DNS) is found at connect for the
``Received:`` field. Those are envelope checks: each is one small module behind this
interface (``mailhost.abuse``), ``service.py`` builds the list, and SMTP calls it
knowing nothing of what is in it.

A check sees one connection in three steps, each on the reactor thread:

1. ``connect(client)`` when the client connects: start lookups about its address
   and keep their Deferreds in ``client.pending`` (never wait here: the greeting is
   not held back). Whatever is still pending ``deadline`` seconds after the connect
   (the DNS timeout) is cancelled, however many lookups a check makes in a row,
   so no reply ever waits longer than that for them.
2. ``mail(client, sender)`` at MAIL FROM, after every pending lookup has settled:
   a ``Verdict`` that refuses, or None.
3. ``rcpt(client, sender, recipient, accepted)`` at each RCPT the recipient policy
   accepted (``accepted``: recipients taken so far in this transaction).

The first refusal is the answer. A check that fails unexpectedly is logged and
skipped: a bug in a check must not refuse mail. This module imports nothing else of
mailhost but ``stage`` (for ``Verdict``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from mailhost.message.stage import Verdict

log = Logger()


@dataclass
class ClientContext:
    """One SMTP connection as the envelope checks see it; made by SMTP at connect.
    ``helo`` and ``user`` are brought up to date by SMTP before each MAIL FROM."""

    ip: str
    submission: bool = False  # came in on the submission listener
    helo: str = ""
    user: str | None = None  # the authenticated user, if any
    #: The client's name for ``Received:``: the forward-confirmed PTR name,
    #: ``"unknown"`` when it could not be confirmed, None when nobody looked.
    name: str | None = None
    #: A DNS allowlist (DNSWL) vouches for the client: no DNSBL, no greylisting.
    allowlisted: bool = False
    #: Lookups started at connect, by check name; settled before MAIL FROM's checks.
    pending: dict[str, defer.Deferred[Any]] = field(default_factory=dict)
    #: What the checks found, by check name (for logs).
    results: dict[str, Any] = field(default_factory=dict)
    #: Results that every message of this connection starts with in its
    #: ``MessageContext.results`` (``iprev`` for Authentication-Results).
    message_results: dict[str, Any] = field(default_factory=dict)
    #: For checks that converse about the transaction (milters, their macros): the
    #: client's port and our address, set at connect; the login's SASL mechanism,
    #: MAIL FROM's ESMTP parameters as sent (set before MAIL FROM's checks) and the
    #: transaction's id ("" at MAIL FROM, as Postfix's ``i``; set before RCPT's).
    port: int = 0
    local_ip: str = ""
    auth_mechanism: str = ""
    mail_params: tuple[str, ...] = ()
    transaction_id: str = ""
    #: What the pipeline's stages keep for this SMTP session (``MessageContext.session``,
    #: the same dict): a milter's connection, shared by its envelope and content steps.
    session: dict[str, Any] | None = None


class IEnvelopeCheck(Interface):
    """One SMTP-phase check. Per-connection state lives in the ``ClientContext``."""

    name = Attribute("The check's name, for logs.")

    def connect(client: ClientContext) -> None:
        """The client connected: start lookups (Deferreds in ``client.pending[name]``,
        each firing, never failing, within the DNS timeout). Must not raise."""

    def mail(client: ClientContext, sender: str) -> defer.Deferred[Verdict | None] | Verdict | None:
        """MAIL FROM (``""`` for the null sender), syntax and ownership already
        checked: a refusing Verdict, or None."""

    def rcpt(client: ClientContext, sender: str, recipient: str,
             accepted: int) -> defer.Deferred[Verdict | None] | Verdict | None:
        """A RCPT the recipient policy accepted: a refusing Verdict, or None."""


class EnvelopeChecks:
    """The configured envelope checks in order; SMTP's one handle on them."""

    def __init__(self, checks: Sequence[IEnvelopeCheck] = (), deadline: float | None = None,
                 clock: IReactorTime | None = None) -> None:
        self.checks = tuple(checks)
        #: Seconds after connect by which the connect lookups are settled (cancelled).
        self.deadline = deadline
        self.clock = clock

    def __bool__(self) -> bool:
        return bool(self.checks)

    def joined(self, stages: Sequence[Any]) -> EnvelopeChecks:
        """These checks, then the pipeline stages that answer at SMTP time too (a
        stage that provides ``IEnvelopeCheck``: the milters), in their order."""
        extra: tuple[Any, ...] = tuple(s for s in stages if IEnvelopeCheck.providedBy(s))
        return EnvelopeChecks(self.checks + extra, self.deadline, self.clock) if extra else self

    def connect(self, client: ClientContext) -> ClientContext:
        for check in self.checks:
            try:
                check.connect(client)
            except Exception:
                log.failure("envelope check {check} failed at connect", check=check.name)
        if self.deadline is not None and self.clock is not None:
            for d in client.pending.values():
                d.addTimeout(self.deadline, self.clock)
        return client

    def mail(self, client: ClientContext, sender: str) -> defer.Deferred[Verdict | None]:
        """Deferred firing with the first refusal, or None."""
        return self._first_refusal(client, "mail", (sender,))

    def rcpt(self, client: ClientContext, sender: str, recipient: str,
             accepted: int) -> defer.Deferred[Verdict | None]:
        """Deferred firing with the first refusal, or None."""
        return self._first_refusal(client, "rcpt", (sender, recipient, accepted))

    def _first_refusal(self, client: ClientContext, step: str,
                       args: tuple[Any, ...]) -> defer.Deferred[Verdict | None]:
        """The checks' answer for ``step``, already fired when nothing is pending and
        every check answers at once (the rate limits do, and they are always there):
        this runs at every MAIL and RCPT, and a coroutine per check cost more than the
        checks. The first check that returns a Deferred hands the rest to the coroutine."""
        if client.pending:
            return defer.Deferred.fromCoroutine(self._step(client, step, args, 0, None))
        for i, check in enumerate(self.checks):
            try:
                result = getattr(check, step)(client, *args)
            except Exception:
                log.failure("envelope check {check} failed", check=check.name)
                continue
            if isinstance(result, defer.Deferred):
                return defer.Deferred.fromCoroutine(self._step(client, step, args, i, result))
            if result is not None and result.refuses:
                return defer.succeed(result)
        return defer.succeed(None)

    async def _step(self, client: ClientContext, step: str, args: tuple[Any, ...],
                    start: int, first: defer.Deferred[Any] | None) -> Verdict | None:
        """``step`` from check number ``start`` on (whose answer, when given, is the
        Deferred ``first``), once the connect lookups have settled."""
        await self.settle(client)
        for check in self.checks[start:]:
            if first is not None:
                verdict = await self._ask(check, lambda d=first: d)
                first = None
            else:
                verdict = await self._ask(check, getattr(check, step), client, *args)
            if verdict is not None:
                return verdict
        return None

    async def settle(self, client: ClientContext) -> None:
        """Wait for the lookups started at connect (each bounded in time)."""
        while client.pending:
            name, d = next(iter(client.pending.items()))
            try:
                await d
            except (defer.CancelledError, defer.TimeoutError):  # the deadline
                log.info("envelope check {check}: lookups not done within {deadline} s "
                         "of connect; going on without them", check=name,
                         deadline=self.deadline, event="checks.deadline")
            except Exception:
                log.failure("envelope check {check}: lookup failed", check=name)
            client.pending.pop(name, None)

    @staticmethod
    async def _ask(check: IEnvelopeCheck, method: Any, *args: Any) -> Verdict | None:
        try:
            result = method(*args)
            verdict: Verdict | None = (
                (await result) if isinstance(result, defer.Deferred) else result)
        except Exception:
            log.failure("envelope check {check} failed", check=check.name)
            return None
        if verdict is None or not verdict.refuses:
            return None
        return verdict


__all__ = ["ClientContext", "EnvelopeChecks", "IEnvelopeCheck"]
