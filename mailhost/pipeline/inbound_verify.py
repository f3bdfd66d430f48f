"""What the inbound hash-as-it-streams checks share (``dkim``, ``arc``): skip
authenticated submissions, feed the verifier the body, record its result."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mailhost.message.stage import Feeding, IBodyConsumer, MessageContext


class StreamingVerifyStage:
    """Half an ``IStage``: subclasses name the stage and say how a result is recorded.
    ``verifier.start(header_block)`` returns an object with ``update(chunk)`` and an
    awaitable ``finish()``."""

    name = ""

    def __init__(self, verifier: Any) -> None:
        self.verifier = verifier

    def envelope(self, ctx: MessageContext) -> None:
        pass

    def message(self, ctx: MessageContext) -> IBodyConsumer | None:
        if ctx.user is not None:
            return None
        consumer = Feeding(self.verifier.start(ctx.header_block))
        ctx.state[self.name] = consumer
        return consumer

    def record(self, ctx: MessageContext, result: Any) -> None:
        raise NotImplementedError

    async def _finish(self, ctx: MessageContext) -> None:
        consumer = ctx.state.pop(self.name, None)
        if consumer is not None:
            self.record(ctx, await consumer.target.finish())

    def finish(self, ctx: MessageContext) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._finish(ctx))
