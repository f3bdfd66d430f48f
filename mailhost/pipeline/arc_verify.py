"""The ARC check (RFC 8617): the chain of an inbound message, hashed as it streams.

Results: ``ctx.results["arc"]`` (``ARCResult``), recorded by ``auth_results`` as
``arc=pass|fail|none`` and read by ``arc_seal`` for the ``cv=`` of our set. ARC
refuses nothing here: a receiver may use a passing chain to forgive a DMARC failure
of mail forwarded by a sealer it trusts, but no such local policy is configured
(docs/deliverability.md says why). Authenticated submissions are not verified.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet import defer
from zope.interface import implementer

from mailhost.mailauth.arc import ARCVerifier
from mailhost.message.stage import Feeding, IBodyConsumer, IStage, MessageContext


@implementer(IStage)
class ARCVerifyStage:
    """Implements: IStage (``arc``)."""

    name = "arc"

    def __init__(self, verifier: ARCVerifier) -> None:
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
            result = await consumer.target.finish()
            ctx.results["arc"] = replace(result, remote_ip=ctx.client_ip)

    def finish(self, ctx: MessageContext) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._finish(ctx))
