"""The DKIM check (RFC 6376): every signature, hashed as the body streams past.

Authenticated submissions are not verified (the mail is ours and unsigned yet).
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from mailhost.mailauth.dkim import DKIMVerifier
from mailhost.message.stage import Feeding, IBodyConsumer, IStage, MessageContext


@implementer(IStage)
class DKIMVerifyStage:
    """Implements: IStage (``dkim``). Results: ``ctx.results["dkim"]``, one
    ``DKIMResult`` per signature (empty: unsigned)."""

    name = "dkim"

    def __init__(self, verifier: DKIMVerifier) -> None:
        self.verifier = verifier

    def envelope(self, ctx: MessageContext) -> None:
        pass

    def message(self, ctx: MessageContext) -> IBodyConsumer | None:
        if ctx.user is not None:
            return None
        consumer = Feeding(self.verifier.start(ctx.header_block))
        ctx.state[self.name] = consumer
        return consumer

    async def _finish(self, ctx: MessageContext) -> None:
        consumer = ctx.state.pop(self.name, None)
        if consumer is not None:
            ctx.results["dkim"] = await consumer.target.finish()

    def finish(self, ctx: MessageContext) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._finish(ctx))
