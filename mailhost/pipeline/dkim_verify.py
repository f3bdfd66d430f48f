"""The DKIM check (RFC 6376): every signature, hashed as the body streams past.

Authenticated submissions are not verified (the mail is ours and unsigned yet).
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from mailhost.mailauth.dkim import DKIMVerifier
from mailhost.message.stage import IStage, MessageContext
from mailhost.pipeline.inbound_verify import StreamingVerifyStage


@implementer(IStage)
class DKIMVerifyStage(StreamingVerifyStage):
    """Implements: IStage (``dkim``). Results: ``ctx.results["dkim"]``, one
    ``DKIMResult`` per signature (empty: unsigned)."""

    name = "dkim"

    def __init__(self, verifier: DKIMVerifier) -> None:
        super().__init__(verifier)

    def record(self, ctx: MessageContext, result: Any) -> None:
        ctx.results["dkim"] = result
