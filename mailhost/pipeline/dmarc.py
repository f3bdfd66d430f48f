"""The DMARC check (RFC 7489) and its policy: reject, Junk, or only record.

Runs after ``spf`` and ``dkim`` (it reads their results). On a DMARC ``fail`` the
domain's disposition (after ``pct``) is applied in ``enforce`` mode: ``reject`` is
``550 5.7.1`` at end of data, ``quarantine`` files the message in the recipients'
Junk folder; ``monitor`` mode only records the result in Authentication-Results.
Mail authenticated on submission is never checked against its own domain's policy
(the user may send as their domain from anywhere).

Forwarded mail (RFC 8617 §7.2, RFC 7489 §6.7 local policy): a ``fail`` is not
enforced when ``arc`` (listed before ``dmarc``) found a passing chain whose newest
seal is of a domain in ``pipeline.arc_trusted_sealers`` and whose AAR recorded
``dmarc=pass`` there: the sealer vouches that the message authenticated before it
forwarded it. The result stays ``fail``, with the override in its reason.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet import defer
from zope.interface import implementer

from mailhost.mailauth.dmarc import DMARCChecker, from_domain
from mailhost.message.stage import IStage, MessageContext, Verdict


@implementer(IStage)
class DMARCStage:
    """Implements: IStage (``dmarc``). Results: ``ctx.results["dmarc"]``."""

    name = "dmarc"

    def __init__(self, checker: DMARCChecker, mode: str = "enforce",
                 trusted_sealers: frozenset[str] = frozenset()) -> None:
        if mode not in ("enforce", "monitor"):
            raise ValueError(f"DMARC mode must be enforce or monitor, not {mode!r}")
        self.checker = checker
        self.mode = mode
        self.trusted_sealers = trusted_sealers

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
        arc = ctx.results.get("arc")
        if (result.result == "fail" and arc is not None and arc.result == "pass"
                and arc.domain in self.trusted_sealers and arc.sealer_dmarc == "pass"):
            result = replace(result, disposition="none", reason=(
                f"{result.reason}; local policy: dmarc=pass at trusted ARC sealer {arc.domain}"))
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
