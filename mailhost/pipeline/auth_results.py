"""The Authentication-Results modifier (RFC 8601): one field with our authserv-id.

Incoming fields that claim our authserv-id are removed first (RFC 8601 §5), whether
or not we add one: otherwise a sender could forge our verdict. It records what the
checks before it in ``pipeline.stages`` found, so it is listed after them.
"""

from __future__ import annotations

from zope.interface import implementer

from mailhost.mailauth.authresults import build, strip_ours
from mailhost.message.stage import IStage, MessageContext


@implementer(IStage)
class AuthResultsStage:
    """Implements: IStage (``auth_results``)."""

    name = "auth_results"

    def __init__(self, authserv_id: str) -> None:
        self.authserv_id = authserv_id

    def envelope(self, ctx: MessageContext) -> None:
        pass

    def message(self, ctx: MessageContext) -> None:
        return None

    def finish(self, ctx: MessageContext) -> None:
        ctx.header_block = strip_ours(ctx.header_block, self.authserv_id)
        results = ctx.results
        if not any(k in results for k in ("spf", "dkim", "dmarc", "arc")):
            return None  # nothing was checked (an authenticated submission)
        ctx.prepend(build(self.authserv_id, spf=results.get("spf", ()),
                          dkim=results.get("dkim"), dmarc=results.get("dmarc"),
                          iprev=results.get("iprev"), arc=results.get("arc")))
        return None
