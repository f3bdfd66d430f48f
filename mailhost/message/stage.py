"""The message pipeline: ``IStage`` (checks and modifiers) and ``Pipeline``, their order.

Like maddy's checks and modifiers: each stage is one small module behind one
interface (``mailhost.pipeline``: SPF, DKIM verification, DMARC, Authentication-
Results, DKIM signing), the config names the chain, and ``service.py`` builds it and
hands it to SMTP. SMTP knows only this module, so adding a stage touches no protocol
code.

A stage sees one message in three steps, each on the reactor thread:

1. ``envelope(ctx)`` at MAIL FROM: the client, its HELO and the sender are known. A
   stage may start asynchronous work here (SPF asks DNS) and keep its Deferred in
   ``ctx.pending``, so the answer is usually ready before the body is in.
2. ``message(ctx)`` once the header block is complete (``ctx.header_block``): it may
   return a body consumer (``IBodyConsumer``) that sees every body chunk (the DKIM
   body hashes), so nothing has to hold the message.
3. ``finish(ctx)`` after the last octet, stage after stage in the configured order: a
   check records its results in ``ctx.results`` and returns a ``Verdict`` (or None
   for "go on"); a modifier adds header fields with ``ctx.prepend`` or rewrites
   ``ctx.header_block`` (the Authentication-Results stage removes forged fields that
   claim our authserv-id). The first verdict that refuses (reject, tempfail) ends
   the run; ``quarantine`` is remembered and routing files the message in Junk.

This module imports nothing else of mailhost (DESIGN.md: ``message`` is usable by
every part).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

log = Logger()


@dataclass(frozen=True)
class Verdict:
    """What a check decides: ``accept``, ``reject``/``tempfail`` (with the SMTP reply
    to give), ``quarantine`` (delivered to the recipients' Junk folder) or ``discard``
    (250, delivered nowhere; ends the run like a refusal)."""

    action: str
    code: int = 0
    status: str = ""
    text: str = ""

    @classmethod
    def reject(cls, text: str, code: int = 550, status: str = "5.7.1") -> Verdict:
        return cls("reject", code, status, text)

    @classmethod
    def tempfail(cls, text: str, code: int = 451, status: str = "4.7.1") -> Verdict:
        return cls("tempfail", code, status, text)

    @classmethod
    def quarantine(cls, text: str = "") -> Verdict:
        return cls("quarantine", text=text)

    @classmethod
    def discard(cls, text: str = "") -> Verdict:
        return cls("discard", text=text)

    @property
    def refuses(self) -> bool:
        return self.action in ("reject", "tempfail")


ACCEPT = Verdict("accept")


@dataclass
class MessageContext:
    """One message as the stages see it; made by SMTP at MAIL FROM."""

    client_ip: str
    helo: str
    sender: str  # MAIL FROM, "" for the null sender
    user: str | None = None  # the authenticated user, if any
    submission: bool = False  # came in on the submission listener
    trusted: bool = False  # authenticated, or from a relay network: ours to sign
    recipients: list[str] = field(default_factory=list)
    #: Remote addresses a local alias forwards this message to (through the outbound
    #: queue, with the other remote copies): ``arc_seal`` seals the message for them.
    forwarded: list[str] = field(default_factory=list)
    #: A stage (a milter) added or removed recipients: routing then follows
    #: ``recipients`` instead of what SMTP decided at RCPT time.
    recipients_changed: bool = False
    header_block: bytes = b""  # the client's header block, up to its empty line
    #: Stage results by name (``spf``, ``dkim``, ``dmarc``) for Authentication-Results.
    results: dict[str, Any] = field(default_factory=dict)
    #: Work started at MAIL FROM, by stage name.
    pending: dict[str, defer.Deferred[Any]] = field(default_factory=dict)
    #: A stage's own per-message objects (a running hash), by stage name.
    state: dict[str, Any] = field(default_factory=dict)
    quarantined: bool = False
    #: For stages that replay the transaction (milters): the SMTP transaction id, the
    #: client's port and verified name ("" unknown), our address, MAIL FROM's ESMTP
    #: parameters as sent, and ``read_body(sink)`` (set at end of data): gives the
    #: held body to ``sink`` chunk by chunk, waiting on a Deferred ``sink`` returns.
    #: A stage that replaces the body replaces ``read_body``; the targets read the
    #: body through it. (Body consumers of earlier stages saw the original: a
    #: ``dkim_sign`` signature no longer matches a replaced body.)
    queue_id: str = ""
    client_port: int = 0
    client_name: str = ""
    local_ip: str = ""
    auth_mechanism: str = ""  # the SASL mechanism of ``user``'s login
    mail_params: tuple[str, ...] = ()
    read_body: Callable[[Callable[[bytes], defer.Deferred[None] | None]],
                        defer.Deferred[None]] | None = None
    #: State a stage keeps for the SMTP session (a milter's connection), shared by
    #: the session's messages, by stage; released by ``Pipeline.close_session``.
    #: None: the message has no session (each stage keeps nothing beyond it).
    session: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # for the transaction log
    _prepended: list[bytes] = field(default_factory=list)

    def prepend(self, fields: bytes) -> None:
        """Put header fields (each ending in CRLF) on top of the message; later calls
        go above earlier ones, as each hop adds its fields on top."""
        if fields:
            self._prepended.insert(0, fields)

    @property
    def prepended(self) -> bytes:
        return b"".join(self._prepended)


class IBodyConsumer(Interface):
    """Sees the body of one message as it streams past."""

    def update(chunk: bytes) -> None:
        """A body chunk (CRLF line ends, dot-unstuffed)."""


@implementer(IBodyConsumer)
class Feeding:
    """Implements: IBodyConsumer, handing each chunk to ``target.update``: a body hash
    or signature under way in ``mailhost.mailauth``, which knows no pipeline."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def update(self, chunk: bytes) -> None:
        self.target.update(chunk)


class IStage(Interface):
    """One check or modifier of the message pipeline. Implementations keep no
    per-message state on themselves: it lives in the ``MessageContext``."""

    name = Attribute("The stage's name in ``pipeline.stages``.")

    def envelope(ctx: MessageContext) -> None:
        """MAIL FROM was accepted: start envelope work (keep Deferreds in
        ``ctx.pending[name]``). Must not raise."""

    def message(ctx: MessageContext) -> IBodyConsumer | None:
        """The header block is complete (``ctx.header_block``): a consumer for the
        body chunks, or None."""

    def finish(ctx: MessageContext) -> defer.Deferred[Verdict | None] | Verdict | None:
        """The whole message is in: record results, add fields; a Verdict (or a
        Deferred firing with one), None for accept."""


class ISessionStage(IStage):
    """A stage that keeps something for a whole SMTP session (in ``ctx.session``)."""

    def session_closed(session: dict[str, Any]) -> None:
        """The SMTP session ended (QUIT, a dropped client, shutdown): release what this
        stage keeps in ``session``. Must not raise."""


class Pipeline:
    """The configured stages in order; ``run`` drives one message through them."""

    def __init__(self, stages: Sequence[IStage], spool_dir: str | None = None) -> None:
        self.stages = tuple(stages)
        #: Where a message too large to hold in memory waits for the verdict (on disk:
        #: /tmp may be a tmpfs, i.e. memory); None: the system's temporary directory.
        self.spool_dir = spool_dir

    def __bool__(self) -> bool:
        return bool(self.stages)

    def start(self, ctx: MessageContext) -> MessageContext:
        """MAIL FROM: every stage's ``envelope``."""
        for stage in self.stages:
            stage.envelope(ctx)
        return ctx

    def close_session(self, session: dict[str, Any]) -> None:
        """An SMTP session that gave its messages ``session`` ended."""
        for stage in self.stages:
            if ISessionStage.providedBy(stage):
                try:
                    stage.session_closed(session)
                except Exception:
                    log.failure("pipeline stage {stage}: session_closed failed", stage=stage.name)

    def headers_done(self, ctx: MessageContext) -> list[IBodyConsumer]:
        consumers = []
        for stage in self.stages:
            consumer = stage.message(ctx)
            if consumer is not None:
                consumers.append(consumer)
        return consumers

    def finish(self, ctx: MessageContext) -> defer.Deferred[Verdict]:
        """Deferred firing with the final Verdict (``ACCEPT``, ``quarantine`` or the
        first refusal). A stage that fails unexpectedly is logged and skipped: a bug
        in a check must not lose mail."""
        return defer.Deferred.fromCoroutine(self._finish(ctx))

    async def _finish(self, ctx: MessageContext) -> Verdict:
        outcome = ACCEPT
        for stage in self.stages:
            try:
                result = stage.finish(ctx)
                verdict = (await result) if isinstance(result, defer.Deferred) else result
            except Exception:
                log.failure("pipeline stage {stage} failed", stage=stage.name)
                continue
            if verdict is None or verdict.action == "accept":
                continue
            ctx.notes.append(f"{stage.name}={verdict.action}")
            if verdict.refuses or verdict.action == "discard":
                return verdict
            if verdict.action == "quarantine":
                ctx.quarantined = True
                outcome = verdict
        return outcome


class HeaderSplitter:
    """Splits a message stream at the end of its header block and feeds the stages.

    The header block is held (at most ``max_header`` octets; a longer one is treated
    as ending there, so memory stays bounded); every later octet goes to the
    consumers as it comes."""

    def __init__(self, pipeline: Pipeline, ctx: MessageContext, max_header: int = 1024 * 1024):
        self.pipeline = pipeline
        self.ctx = ctx
        self.max_header = max_header
        self._head = bytearray()
        self._consumers: list[IBodyConsumer] | None = None
        #: Octets of the message that are its header block (with the empty line);
        #: stages may rewrite ``ctx.header_block``, this stays as received.
        self.header_length = 0

    def feed(self, data: bytes) -> None:
        if self._consumers is not None:
            for consumer in self._consumers:
                consumer.update(data)
            return
        start = max(len(self._head) - 3, 0)
        self._head += data
        end = _header_end(self._head, start)
        if end is None:
            if len(self._head) <= self.max_header:
                return
            end = len(self._head)
        body = bytes(self._head[end:])
        self._begin_body(bytes(self._head[:end]))
        if body:
            self.feed(body)

    def close(self) -> None:
        """The message ended; a message without a body is all header."""
        if self._consumers is None:
            self._begin_body(bytes(self._head))

    def _begin_body(self, head: bytes) -> None:
        self._head = bytearray()
        self.header_length = len(head)
        self.ctx.header_block = head
        self._consumers = self.pipeline.headers_done(self.ctx)


def _header_end(buf: bytearray, start: int) -> int | None:
    """Offset just past the empty line that ends the header block, or None."""
    if buf[:2] == b"\r\n":
        return 2  # no header fields at all
    i = buf.find(b"\r\n\r\n", start)
    return None if i < 0 else i + 4
