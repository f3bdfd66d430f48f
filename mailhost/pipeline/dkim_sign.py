"""The DKIM signing modifier (RFC 6376, RFC 8463): mail of our domains, signed.

Signs a message whose ``From:`` domain has keys (``pipeline.dkim_selectors``) when
it comes from a client we relay for: an authenticated submission, or a host of
``smtp.relay_networks``. Mail from anyone else is never signed, whatever its From
says (that would lend our signature to forgeries). The body hash is computed as the
body streams past; the signature goes on top at the end.
"""

from __future__ import annotations

from twisted.logger import Logger
from zope.interface import implementer

from mailhost.mailauth.dkim import DKIMSigner, DKIMSigning
from mailhost.mailauth.dmarc import from_domain
from mailhost.message.stage import Feeding, IBodyConsumer, IStage, MessageContext

log = Logger()



@implementer(IStage)
class DKIMSignStage:
    """Implements: IStage (``dkim_sign``)."""

    name = "dkim_sign"

    def __init__(self, signer: DKIMSigner) -> None:
        self.signer = signer

    def envelope(self, ctx: MessageContext) -> None:
        pass

    def message(self, ctx: MessageContext) -> IBodyConsumer | None:
        if not ctx.trusted:
            return None
        domain = from_domain(ctx.header_block)
        if not domain:
            return None
        signing = self.signer.start(ctx.header_block, domain)
        if signing is None:
            return None
        consumer = Feeding(signing)
        ctx.state[self.name] = (consumer, domain)
        return consumer

    def finish(self, ctx: MessageContext) -> None:
        started = ctx.state.pop(self.name, None)
        if started is None:
            return None
        consumer, domain = started
        signing: DKIMSigning = consumer.target
        # Sign the header block as delivered (a modifier before us may have changed it).
        signing.header_block = ctx.header_block
        try:
            ctx.prepend(signing.finish())
        except Exception:  # a message dkimpy cannot sign still goes, unsigned
            log.failure("DKIM signing for {domain} failed", domain=domain)
        return None
