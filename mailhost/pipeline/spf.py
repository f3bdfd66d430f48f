"""The SPF check (RFC 7208): MAIL FROM and HELO, started at MAIL FROM.

The lookups start as soon as MAIL FROM is accepted, with the session's client
address and HELO, so the answer is usually in before the body is; the result is
kept for Authentication-Results and DMARC. SPF alone refuses nothing here: a
``fail`` matters through DMARC, whose policy the domain owner chose (a bare SPF
``-all`` rejection breaks forwarding, which DMARC's DKIM alignment survives).
Authenticated submissions are not checked: the client is ours.
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from mailhost.mailauth.spf import SPFChecker, SPFResult
from mailhost.message.stage import IStage, MessageContext


@implementer(IStage)
class SPFStage:
    """Implements: IStage (``spf``). Results: ``ctx.results["spf"]``, a list of
    ``SPFResult`` (MAIL FROM first, then HELO)."""

    name = "spf"

    def __init__(self, checker: SPFChecker) -> None:
        self.checker = checker

    def envelope(self, ctx: MessageContext) -> None:
        if ctx.user is not None:
            return
        ctx.pending[self.name] = defer.Deferred.fromCoroutine(self._check(ctx))

    async def _check(self, ctx: MessageContext) -> list[SPFResult]:
        results = [await self.checker.check_mail_from(ctx.client_ip, ctx.sender, ctx.helo)]
        if ctx.sender and ctx.helo:  # a null sender's check already was the HELO's
            results.append(await self.checker.check_helo(ctx.client_ip, ctx.helo))
        return results

    def message(self, ctx: MessageContext) -> None:
        return None

    async def _finish(self, ctx: MessageContext) -> None:
        pending = ctx.pending.pop(self.name, None)
        if pending is not None:
            ctx.results["spf"] = await pending

    def finish(self, ctx: MessageContext) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._finish(ctx))
