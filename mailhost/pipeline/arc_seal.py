"""The ARC sealing modifier (RFC 8617 §5.1): our ARC set on mail an alias forwards.

When a local alias forwards a message to another domain (``ctx.forwarded``, set by
routing from the alias expansion), the next hop sees our IP, not the author's: SPF
fails there, and DKIM breaks if anything changed. Our seal tells it what we found
when the message reached us: the ARC-Authentication-Results are our checks' results
for this message (as ``auth_results`` writes them), the ARC-Message-Signature signs
the message as we pass it on, and the ARC-Seal's ``cv=`` is the ``arc`` check's
verdict on the chain that came in. So ``arc_seal`` comes after ``arc`` and the other
checks, and after every modifier that changes the header fields it signs.

The whole message is sealed (the copy for local mailboxes of the same alias carries
the set too: harmless, and one copy is cheaper than two). Mail of an authenticated
user is not sealed: ``dkim_sign`` signs it as ours.
"""

from __future__ import annotations

from twisted.logger import Logger
from zope.interface import implementer

from mailhost.mailauth.arc import ARCSealer
from mailhost.mailauth.authresults import build
from mailhost.message.stage import Feeding, IBodyConsumer, IStage, MessageContext

log = Logger()



@implementer(IStage)
class ARCSealStage:
    """Implements: IStage (``arc_seal``)."""

    name = "arc_seal"

    def __init__(self, sealer: ARCSealer, authserv_id: str) -> None:
        self.sealer = sealer
        self.authserv_id = authserv_id

    def envelope(self, ctx: MessageContext) -> None:
        pass

    def message(self, ctx: MessageContext) -> IBodyConsumer | None:
        if not ctx.forwarded or ctx.user is not None:
            return None
        consumer = Feeding(self.sealer.start())
        ctx.state[self.name] = consumer
        return consumer

    def finish(self, ctx: MessageContext) -> None:
        consumer = ctx.state.pop(self.name, None)
        if consumer is None:
            return None
        r = ctx.results
        ours = build(self.authserv_id, spf=r.get("spf", ()), dkim=r.get("dkim"),
                     dmarc=r.get("dmarc"), iprev=r.get("iprev"), arc=r.get("arc"))
        results = ours.split(b":", 1)[1].split(b";", 1)[1] if b";" in ours else b" none"
        arc = r.get("arc")
        try:
            ctx.prepend(consumer.target.finish(
                ctx.prepended + ctx.header_block, self.authserv_id, results.strip(),
                arc.result if arc is not None else "none"))
        except Exception:  # a message we cannot seal still goes, unsealed
            log.failure("ARC sealing failed")
        return None
