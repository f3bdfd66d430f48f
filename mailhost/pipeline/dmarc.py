"""The DMARC check (RFC 7489) and its policy: reject, Junk, or only record.

Runs after ``spf`` and ``dkim`` (it reads their results). On a DMARC ``fail`` the
domain's disposition (after ``pct``) is applied in ``enforce`` mode: ``reject`` is
``550 5.7.1`` at end of data, ``quarantine`` files the message in the recipients'
Junk folder; ``monitor`` mode only records the result in Authentication-Results.
Mail authenticated on submission is never checked against its own domain's policy
(the user may send as their domain from anywhere).
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from mailhost.mailauth.dmarc import DMARCChecker, from_domain
from mailhost.message.stage import IStage, MessageContext, Verdict


@implementer(IStage)
class DMARCStage:
    """Implements: IStage (``dmarc``). Results: ``ctx.results["dmarc"]``."""

    name = "dmarc"

    def __init__(self, checker: DMARCChecker, mode: str = "enforce") -> None:
        if mode not in ("enforce", "monitor"):
            raise ValueError(f"DMARC mode must be enforce or monitor, not {mode!r}")
        self.checker = checker
        self.mode = mode

    def envelope(self, ctx: MessageContext) -> None:
        pass

    def message(self, ctx: MessageContext) -> None:
        return None

    async def _finish(self, ctx: MessageContext) -> Verdict | None:
        if ctx.user is not None:
            return None
        spf = next((r for r in ctx.results.get("spf", ()) if r.identity == "mailfrom"), None)
        domain = from_domain(ctx.header_block)
        result = await self.checker.check(domain, spf, ctx.results.get("dkim", ()))
        ctx.results["dmarc"] = result
        if result.result != "fail" or self.mode != "enforce":
            return None
        if result.disposition == "reject":
            return Verdict.reject(f"DMARC policy of {result.from_domain} rejects this message "
                                  "(no aligned SPF or DKIM pass)")
        if result.disposition == "quarantine":
            return Verdict.quarantine(f"DMARC policy of {result.from_domain}")
        return None

    def finish(self, ctx: MessageContext) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._finish(ctx))
