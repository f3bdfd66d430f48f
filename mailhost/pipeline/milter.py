"""The milter check (``milter``): every milter of ``pipeline.milters``, in order.

Like Postfix's ``smtpd_milters``: each milter sees the whole transaction (see
``mailhost.milter.client``), the envelope when it happens. The stage is also an
envelope check (``IEnvelopeCheck``, which ``service.py`` appends to the SMTP-phase
checks): at MAIL FROM each milter gets connect, HELO and MAIL, and its refusal there
(or at connect or HELO) is the answer to MAIL; at each RCPT it gets the recipient,
and its reject or tempfail refuses that recipient alone (``550``/``450`` or its own
``SMFIR_REPLYCODE``), the others go on. A milter that fails then follows its
``default_action`` at that command. The rest of the conversation (DATA, header,
body) runs at the end of the message, on the same connection, and its answer is
honoured: accept (this milter has
nothing more to say), continue, reject (its ``SMFIR_REPLYCODE`` text, else
``550 5.7.1``), tempfail (``451 4.7.1``), discard (250, delivered nowhere), header
edits (add, insert, change, delete: applied to ``ctx.header_block``, so the next
milter and the later stages see them), a new body (``SMFIR_REPLBODY``: the
targets and the next milter read it; ``dkim_sign`` has hashed the old one, so sign
after such a milter with a milter, not with ``dkim_sign``) and quarantine (the recipients' Junk folder,
the pipeline's quarantine verdict), and recipients added and removed
(``SMFIR_ADDRCPT``, ``SMFIR_DELRCPT``: ``ctx.recipients``, which routing then
follows; an added one goes through the recipient policy, and is left out, logged,
if that refuses it). A milter that is down, times out or breaks the
protocol follows its ``default_action``: ``tempfail`` (``451 4.7.1``) or ``accept``
(as if it were not configured). The first refusal ends the run; the milters after
it are not asked.

Results for the transaction log are in ``ctx.results["milter"]``: one
(name, outcome) pair per milter asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailhost.message.checks import ClientContext, IEnvelopeCheck
from mailhost.message.spool import Spool
from mailhost.message.stage import ISessionStage, MessageContext, Verdict
from mailhost.milter.client import MilterClient, MilterError, MilterOutcome

log = Logger()


@implementer(ISessionStage, IEnvelopeCheck)
class MilterStage:
    """Implements: ISessionStage, IEnvelopeCheck (``milter``): each milter's
    connection is kept for the SMTP session (``ctx.session``, the same dict as the
    client's ``ClientContext.session``), as Postfix does."""

    name = "milter"

    def __init__(self, clients: Sequence[MilterClient]) -> None:
        self.clients = tuple(clients)

    # -- IEnvelopeCheck: the envelope at SMTP time ------------------------------------

    def connect(self, client: ClientContext) -> None:
        pass  # connect goes at MAIL FROM, with the client's FCrDNS name settled

    def mail(self, client: ClientContext, sender: str) -> defer.Deferred[Verdict | None] | None:
        if client.session is None:  # nowhere to keep the conversation: all at the end
            return None
        return defer.Deferred.fromCoroutine(self._mail(_envelope(client, sender)))

    def rcpt(self, client: ClientContext, sender: str, recipient: str,
             accepted: int) -> defer.Deferred[Verdict | None] | None:
        if client.session is None:
            return None
        return defer.Deferred.fromCoroutine(self._rcpt(_envelope(client, sender), recipient))

    async def _mail(self, ctx: MessageContext) -> Verdict | None:
        for client in self.clients:
            try:
                outcome = await client.mail(ctx)
            except MilterError as e:
                verdict = self._failed(client, e, "MAIL FROM")
                if verdict is not None:
                    return verdict
                continue
            verdict = _refusal(outcome)
            if verdict is not None:
                log.info("milter {milter} refused MAIL FROM <{sender}>: {code} {text}",
                         event="milter.refused", milter=client.spec.name, sender=ctx.sender,
                         code=verdict.code, text=verdict.text)
                return verdict
        return None

    async def _rcpt(self, ctx: MessageContext, recipient: str) -> Verdict | None:
        for client in self.clients:
            try:
                outcome = await client.rcpt(ctx, recipient)
            except MilterError as e:
                verdict = self._failed(client, e, "RCPT TO", ctx.queue_id)
                if verdict is not None:
                    return verdict
                continue
            verdict = _refusal(outcome)
            if verdict is not None:
                log.info("milter {milter} refused RCPT TO <{rcpt}>: {code} {text}",
                         event="milter.refused", milter=client.spec.name, rcpt=recipient,
                         code=verdict.code, text=verdict.text, tid=ctx.queue_id)
                return verdict
        return None

    @staticmethod
    def _failed(client: MilterClient, e: MilterError, where: str, tid: str = "") -> Verdict | None:
        spec = client.spec
        log.warn("milter {milter} failed at {where} ({error}): default action {action}",
                 event="milter.failed", milter=spec.name, where=where, error=str(e),
                 action=spec.default_action, tid=tid)
        if spec.default_action == "tempfail":
            return Verdict.tempfail("Service unavailable - try again later")
        return None

    # -- ISessionStage: the content at the end of the message --------------------------

    def envelope(self, ctx: MessageContext) -> None:
        pass

    def session_closed(self, session: dict[str, Any]) -> None:
        for client in self.clients:
            client.session_closed(session)

    def message(self, ctx: MessageContext) -> None:
        return None

    def finish(self, ctx: MessageContext) -> defer.Deferred[Verdict | None]:
        return defer.Deferred.fromCoroutine(self._finish(ctx))

    async def _finish(self, ctx: MessageContext) -> Verdict | None:
        results: list[tuple[str, str]] = ctx.results.setdefault("milter", [])
        quarantine: Verdict | None = None
        for client in self.clients:
            spec = client.spec
            try:
                outcome = await client.check(ctx)
            except MilterError as e:
                log.warn("milter {milter} failed ({error}): default action {action}",
                         event="milter.failed", milter=spec.name, error=str(e),
                         action=spec.default_action, tid=ctx.queue_id)
                results.append((spec.name, f"failed:{spec.default_action}"))
                if spec.default_action == "tempfail":
                    return Verdict.tempfail("Service unavailable - try again later")
                continue
            results.append((spec.name, outcome.action))
            if outcome.ignored:
                log.warn("milter {milter} asked for {ignored}, which we do not support: ignored",
                         event="milter.ignored", milter=spec.name, ignored=outcome.ignored,
                         tid=ctx.queue_id)
            log.debug("milter {milter}: {action}", milter=spec.name, action=outcome.action,
                      tid=ctx.queue_id)
            if outcome.header_block is not None:
                ctx.header_block = outcome.header_block
            if outcome.body is not None:  # later milters and the targets read the new body
                ctx.read_body = _reader(outcome.body)
            if outcome.added or outcome.removed:  # routing follows ctx.recipients now
                gone = {a.lower() for a in outcome.removed}
                kept = [r for r in ctx.recipients if r.lower() not in gone]
                ctx.recipients = kept + [a for a in outcome.added
                                         if a.lower() not in {r.lower() for r in kept}]
                ctx.recipients_changed = True
                log.info("milter {milter} changed the recipients: +{added} -{removed}",
                         event="milter.recipients", milter=spec.name, added=outcome.added,
                         removed=outcome.removed, tid=ctx.queue_id)
            code, status, text = outcome.reply
            if outcome.action == "reject":
                return Verdict.reject(text, code, status)
            if outcome.action == "tempfail":
                return Verdict.tempfail(text, code, status)
            if outcome.action == "discard":
                return Verdict.discard(f"milter {spec.name}")
            if outcome.action == "quarantine":
                quarantine = Verdict.quarantine(outcome.reason)
        return quarantine


def _refusal(outcome: MilterOutcome | None) -> Verdict | None:
    if outcome is None:
        return None
    code, status, text = outcome.reply
    if outcome.action == "reject":
        return Verdict.reject(text, code, status)
    if outcome.action == "tempfail":
        return Verdict.tempfail(text, code, status)
    return None  # accept or discard: for the whole message, answered at its end


def _envelope(client: ClientContext, sender: str) -> MessageContext:
    """The transaction so far, as the milter conversation reads it (its macros)."""
    return MessageContext(
        client.ip, client.helo, sender, client.user, client.submission,
        queue_id=client.transaction_id, client_port=client.port,
        client_name=client.name or "", local_ip=client.local_ip,
        auth_mechanism=client.auth_mechanism if client.user else "",
        mail_params=client.mail_params, session=client.session)


def _reader(body: Spool) -> Callable[[Callable[[bytes], defer.Deferred[None] | None]],
                                     defer.Deferred[None]]:
    return lambda sink: body.read(0, sink)
