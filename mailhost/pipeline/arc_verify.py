"""The ARC check (RFC 8617): the chain of an inbound message, hashed as it streams.

Results: ``ctx.results["arc"]`` (``ARCResult``), recorded by ``auth_results`` as
``arc=pass|fail|none`` and read by ``arc_seal`` for the ``cv=`` of our set. ARC
refuses nothing here: a receiver may use a passing chain to forgive a DMARC failure
of mail forwarded by a sealer it trusts, but no such local policy is configured
(docs/deliverability.md says why). Authenticated submissions are not verified.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from zope.interface import implementer

from mailhost.mailauth.arc import ARCVerifier
from mailhost.message.stage import IStage, MessageContext
from mailhost.pipeline.inbound_verify import StreamingVerifyStage


@implementer(IStage)
class ARCVerifyStage(StreamingVerifyStage):
    """Implements: IStage (``arc``)."""

    name = "arc"

    def __init__(self, verifier: ARCVerifier) -> None:
        super().__init__(verifier)

    def record(self, ctx: MessageContext, result: Any) -> None:
        ctx.results["arc"] = replace(result, remote_ip=ctx.client_ip)
