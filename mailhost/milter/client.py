"""The conversation with one milter: a message at a time, a connection per SMTP session.

``MilterClient.check(ctx)`` connects, negotiates (``SMFIC_OPTNEG``), and replays the
SMTP transaction as Postfix's ``smtpd_milters`` would: connect (client address and
its FCrDNS name, or ``unknown``), HELO, MAIL FROM with its ESMTP arguments, each
RCPT, DATA, every header field, end of header, the body in chunks of at most 64 KiB
read from the pipeline's spool (never the whole message in memory), end of message.
Before each step go the macros of that stage: Postfix's defaults, or the lists the
milter asked for in its OPTNEG reply. The milter's answer is a ``MilterOutcome``:
what to do with the message, and the header block after its edits.

One connection per SMTP session, as Postfix keeps one, and the envelope at SMTP
time, as Postfix's ``smtpd_milters`` sends it: ``mail(ctx)`` at MAIL FROM opens the
connection (negotiation, connect with the client's FCrDNS name, HELO) and sends MAIL,
``rcpt(ctx, address)`` sends each RCPT the other checks let through, and the milter's
answer is the command's (a reject or tempfail at RCPT refuses that recipient only;
the others go on). ``check(ctx)`` at the end of the message then goes on from DATA
on the same connection. A message whose envelope no one sent (``mail`` was not
called: the stage used on its own) gets the whole transaction at ``check``. The
connection lives in ``ctx.session`` and ends with ``SMFIC_QUIT`` when SMTP closes
the session (``ISessionStage.session_closed``: QUIT, a dropped client, shutdown).
The option negotiation and connect are sent once, HELO again only when the client
changed its name. A transaction that ends early (refused at MAIL, accepted or
discarded before its data, or abandoned by the client with RSET, a refused DATA, a
drop) is followed by ``SMFIC_ABORT`` (at the latest before the next MAIL), so the
milter is ready for the next. A verdict at connect or HELO holds for the whole
session; it is answered at MAIL FROM, the first command that waits for the client's
name (Postfix sends connect once it knows it). A connection that fails is closed;
the transaction then follows the milter's ``default_action``, and the next one
opens a new connection.

Timeouts (``connect_timeout``, ``command_timeout`` for each reply, ``eom_timeout``
for the end-of-message reply) restart at every ``SMFIR_PROGRESS``. A milter that
cannot be reached, times out, breaks the protocol or shuts down is a failure, and
the stage applies the milter's ``default_action``.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.logger import Logger

from mailhost.message.crlf import CRLFNormalizer
from mailhost.message.spool import Spool
from mailhost.message.stage import MessageContext
from mailhost.milter import protocol as p
from mailhost.milter.headers import HeaderEditor, fields_for_milter

log = Logger()

#: What we let a milter do (SMFIF_*). Changing the sender is not offered (not
#: implemented); a milter that sends SMFIR_CHGFROM anyway is logged and ignored.
OFFER_ACTIONS = (p.F_ADDHDRS | p.F_CHGHDRS | p.F_QUARANTINE | p.F_SETSYMLIST | p.F_CHGBODY
                 | p.F_ADDRCPT | p.F_DELRCPT | p.F_ADDRCPT_PAR)
#: Protocol steps a milter may switch off or leave unanswered (all but RCPT_REJ: we
#: never send recipients that SMTP refused).
OFFER_PROTOCOL = 0x1FFFFF & ~p.P_RCPT_REJ

#: Postfix's default macros per stage (milter_*_macros), plus sendmail's interface
#: names at connect.
DEFAULT_MACROS: dict[int, tuple[str, ...]] = {
    p.M_CONNECT: ("j", "{daemon_name}", "{daemon_addr}", "v", "_", "{if_name}", "{if_addr}",
                  "{client_addr}", "{client_name}", "{client_port}"),
    p.M_HELO: ("{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"),
    p.M_ENVFROM: ("i", "{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}",
                  "{mail_host}", "{mail_mailer}"),
    p.M_ENVRCPT: ("i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"),
    p.M_DATA: ("i",),
    p.M_EOH: ("i",),
    p.M_EOM: ("i",),
}
_STAGE_COMMAND = {p.M_CONNECT: p.C_CONNECT, p.M_HELO: p.C_HELO, p.M_ENVFROM: p.C_MAIL,
                  p.M_ENVRCPT: p.C_RCPT, p.M_DATA: p.C_DATA, p.M_EOH: p.C_EOH,
                  p.M_EOM: p.C_BODYEOB}

DEFAULT_REJECT = (550, "5.7.1", "Command rejected")
DEFAULT_TEMPFAIL = (451, "4.7.1", "Service unavailable - try again later")


class MilterError(Exception):
    """The milter failed: unreachable, timed out, broke the protocol, shut down."""


class MilterSpecError(ValueError):
    """A milter's definition in the config cannot work."""


@dataclass(frozen=True)
class MilterSpec:
    """One milter of ``pipeline.milters``: where it listens and how long we wait."""

    name: str
    endpoint: str  # a Twisted client endpoint string
    connect_timeout: float = 30.0
    command_timeout: float = 30.0
    eom_timeout: float = 300.0
    default_action: str = "tempfail"  # or "accept"

    @classmethod
    def parse(cls, name: str, text: str, default_action: str = "tempfail") -> MilterSpec:
        """``"inet:11332@127.0.0.1 default_action=accept command_timeout=10"``: the
        endpoint (Postfix/sendmail ``inet:port@host``, ``inet6:``, ``unix:/path``, or
        any Twisted client endpoint string), then ``key=value`` options."""
        words = text.split()
        if not words:
            raise MilterSpecError(f"milter {name!r}: no endpoint")
        values: dict[str, Any] = {"default_action": default_action}
        for word in words[1:]:
            key, eq, value = word.partition("=")
            if not eq:
                raise MilterSpecError(f"milter {name!r}: expected key=value, got {word!r}")
            if key in ("connect_timeout", "command_timeout", "eom_timeout", "content_timeout"):
                try:
                    seconds = float(value.rstrip("s"))
                except ValueError:
                    raise MilterSpecError(f"milter {name!r}: {key}: not a number: {value!r}") from None
                if seconds <= 0:
                    raise MilterSpecError(f"milter {name!r}: {key} must be positive")
                values["eom_timeout" if key == "content_timeout" else key] = seconds
            elif key == "default_action":
                if value not in ("tempfail", "accept"):
                    raise MilterSpecError(
                        f"milter {name!r}: default_action: expected tempfail or accept, got {value!r}")
                values[key] = value
            else:
                raise MilterSpecError(f"milter {name!r}: unknown option {key!r}")
        return cls(name, endpoint_string(words[0]), **values)


def endpoint_string(text: str) -> str:
    """A milter address as a Twisted client endpoint string."""
    kind, _, rest = text.partition(":")
    if kind in ("inet", "inet6") and "@" in rest:
        port, _, host = rest.partition("@")
        host = host.strip("[]").replace(":", "\\:")
        return f"tcp:host={host}:port={port}"
    if kind in ("unix", "local") and rest.startswith("/"):
        return "unix:path=" + rest.replace(":", "\\:")
    return text


@dataclass
class MilterOutcome:
    """What one milter decided: ``action`` is continue, accept, reject, tempfail,
    discard or quarantine; ``reply`` the SMTP reply of a refusal; ``header_block``
    the block after the milter's edits (None: unchanged)."""

    action: str = "continue"
    reply: tuple[int, str, str] = (0, "", "")
    header_block: bytes | None = None
    #: The new body (SMFIR_REPLBODY), held like the message: a ``Spool`` read from 0.
    body: Spool | None = None
    #: Recipients added (SMFIR_ADDRCPT, _PAR) and removed (SMFIR_DELRCPT), bare addresses.
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reason: str = ""
    ignored: list[str] = field(default_factory=list)


class _Done(Exception):
    """A step's reply ended the conversation early (``session_wide``: at connect or
    HELO, so it holds for the rest of the SMTP session, as in Postfix)."""

    def __init__(self, outcome: MilterOutcome, session_wide: bool = False) -> None:
        self.outcome = outcome
        self.session_wide = session_wide


class _SkipBody(Exception):
    """The milter wants no more body (SMFIR_SKIP)."""


class MilterClient:
    """Talks to one milter; keeps no per-message state (each ``check`` has its own)."""

    def __init__(self, spec: MilterSpec, hostname: str, daemon_name: str = "mailhost",
                 reactor: Any = None, spool_dir: str | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.spec = spec
        self.hostname = hostname
        self.daemon_name = daemon_name
        self.reactor = reactor
        #: Where a replaced body too large for memory waits (the pipeline's spool).
        self.spool_dir = spool_dir

    def check(self, ctx: MessageContext) -> defer.Deferred[MilterOutcome]:
        """The milter's outcome for the message at its end; fails with ``MilterError``."""
        return defer.Deferred.fromCoroutine(self._check(ctx))

    def mail(self, ctx: MessageContext) -> defer.Deferred[MilterOutcome | None]:
        """MAIL FROM (``ctx.session`` must be set): the milter's outcome if it ended
        the transaction there (a refusal, accept, discard, or the session's verdict
        from connect or HELO), else None; fails with ``MilterError``."""
        return defer.Deferred.fromCoroutine(self._mail(ctx))

    def rcpt(self, ctx: MessageContext, address: str) -> defer.Deferred[MilterOutcome | None]:
        """One RCPT after ``mail``: a reject or tempfail of this recipient, or None
        (accepted, or the milter decided for the whole message: ``check`` says so);
        fails with ``MilterError``."""
        return defer.Deferred.fromCoroutine(self._rcpt(ctx, address))

    @property
    def session_key(self) -> str:
        return f"milter:{self.spec.name}"

    @property
    def envelope_key(self) -> str:
        return f"milter:{self.spec.name}:envelope"

    async def _connect(self) -> _Link:
        try:
            endpoint = clientFromString(self.reactor, self.spec.endpoint)
            d = connectProtocol(endpoint, p.MilterProtocol())
            d.addTimeout(self.spec.connect_timeout, self.reactor)
            return _Link(await d)
        except Exception as e:
            raise MilterError(f"cannot connect to {self.spec.endpoint}: {e}") from e

    async def _mail(self, ctx: MessageContext) -> MilterOutcome | None:
        assert ctx.session is not None
        envelope = ctx.session[self.envelope_key] = _Envelope()
        try:
            outcome = await self._converse(ctx, _Conversation.envelope_from, fresh=True)
        except MilterError as e:
            envelope.failed = str(e)
            raise
        if outcome is not None:  # decided for the whole transaction
            envelope.outcome = outcome
        return outcome

    async def _rcpt(self, ctx: MessageContext, address: str) -> MilterOutcome | None:
        envelope = ctx.session.get(self.envelope_key) if ctx.session is not None else None
        if envelope is None or envelope.outcome is not None:
            return None  # not sent at MAIL (check sends it all), or already decided
        if envelope.failed is not None:
            raise MilterError(envelope.failed)

        async def step(conversation: _Conversation) -> MilterOutcome | None:
            try:
                await conversation.envelope_rcpt(address)
            except _Done as e:
                if e.outcome.action in ("reject", "tempfail"):
                    return e.outcome  # this recipient only: the transaction goes on
                raise
            return None

        try:
            outcome = await self._converse(ctx, step, fresh=False)
        except MilterError as e:
            envelope.failed = str(e)
            raise
        if outcome is not None and outcome.action not in ("reject", "tempfail"):
            envelope.outcome = outcome  # accept or discard: the whole message
            return None
        return outcome

    async def _check(self, ctx: MessageContext) -> MilterOutcome:
        envelope = ctx.session.pop(self.envelope_key, None) if ctx.session is not None else None
        if envelope is None:  # nothing was sent at SMTP time: the whole transaction now
            outcome = await self._converse(ctx, _Conversation.run, fresh=True)
        elif envelope.failed is not None:
            raise MilterError(envelope.failed)
        elif envelope.outcome is not None:
            return envelope.outcome
        else:
            outcome = await self._converse(ctx, _Conversation.content, fresh=False)
        assert outcome is not None
        return outcome

    async def _converse(self, ctx: MessageContext,
                        steps: Callable[[_Conversation], Awaitable[MilterOutcome | None]],
                        fresh: bool) -> MilterOutcome | None:
        """Run ``steps`` on the session's connection (``fresh``: opening one if
        needed; otherwise the transaction's must still be there)."""
        link = ctx.session.get(self.session_key) if ctx.session is not None else None
        if link is not None and link.verdict is not None:
            return link.verdict  # decided at connect or HELO, for the whole session
        if link is not None and not link.usable:
            link.close()
            if ctx.session is not None:
                del ctx.session[self.session_key]
            link = None
        if link is None:
            if not fresh:
                raise MilterError("connection lost during the transaction")
            link = await self._connect()
            if ctx.session is not None:
                ctx.session[self.session_key] = link
        link.busy = True
        conversation = _Conversation(self, link, ctx)
        keep = False
        try:
            outcome = await steps(conversation)
            keep = True
            return outcome
        except _Done as e:
            keep = True
            if e.session_wide:
                link.verdict = e.outcome
            else:  # ended before end of message: the milter forgets the message
                link.abort()
            return e.outcome
        except (defer.CancelledError, defer.TimeoutError, error.TimeoutError) as e:
            raise MilterError("timed out") from e
        except p.MilterProtocolError as e:
            raise MilterError(f"protocol error: {e}") from e
        except MilterError:
            raise
        except Exception as e:
            raise MilterError(f"{type(e).__name__}: {e}") from e
        finally:
            link.busy = False
            conversation.discard_body()  # kept only by a final continue or accept
            if not keep or ctx.session is None or link.closed:
                link.close()
                if ctx.session is not None and ctx.session.get(self.session_key) is link:
                    del ctx.session[self.session_key]

    def session_closed(self, session: dict[str, Any]) -> None:
        """The SMTP session ended: SMFIC_QUIT, now or when its message is done."""
        link = session.pop(self.session_key, None)
        if link is None:
            return
        if link.busy:
            link.closed = True  # the running check closes it
        else:
            link.close()


class _Envelope:
    """What one milter made of a transaction's envelope at SMTP time (in the
    session, for ``check``)."""

    def __init__(self) -> None:
        #: The milter decided for the whole message before its data (accept, discard,
        #: or a refusal at MAIL FROM).
        self.outcome: MilterOutcome | None = None
        #: The milter failed during the envelope: its default action applies.
        self.failed: str | None = None


class _Link:
    """One connection to a milter, kept for an SMTP session: what was negotiated
    and which session steps (connect, HELO) it has seen."""

    def __init__(self, proto: p.MilterProtocol) -> None:
        self.proto = proto
        self.negotiated = False
        self.flags = 0
        self.actions = 0
        self.macros = dict(DEFAULT_MACROS)
        self.connected = False  # SMFIC_CONNECT sent
        self.helo: str | None = None  # the HELO name last sent
        self.verdict: MilterOutcome | None = None  # from connect or HELO: the session's
        self.in_transaction = False  # MAIL sent, neither end of message nor ABORT yet
        self.busy = False
        self.closed = False

    @property
    def usable(self) -> bool:
        return not self.closed and self.proto.usable

    def abort(self) -> None:
        """SMFIC_ABORT: the milter forgets the transaction under way."""
        self.in_transaction = False
        self.proto.send(p.C_ABORT)

    def close(self) -> None:
        self.closed = True
        self.proto.send(p.C_QUIT)
        if self.proto.transport is not None:
            self.proto.transport.loseConnection()


class _Conversation:
    """One message's steps with one milter."""

    def __init__(self, client: MilterClient, link: _Link, ctx: MessageContext) -> None:
        self.client = client
        self.spec = client.spec
        self.link = link
        self.proto = link.proto
        self.ctx = ctx
        self.flags = link.flags
        self.actions = link.actions
        self.macros = link.macros
        self.body: Spool | None = None  # a replacement body, while it comes in
        self._pending = bytearray()  # body octets not yet sent (< CHUNK_SIZE)

    def _macro_values(self, rcpt: str = "") -> dict[str, str]:
        ctx = self.ctx
        name = ctx.client_name or "unknown"
        values = {
            "j": self.client.hostname, "v": "mailhost", "{daemon_name}": self.client.daemon_name,
            "{daemon_addr}": ctx.local_ip, "{if_addr}": ctx.local_ip,
            "{if_name}": self.client.hostname,
            "_": f"{name} [{ctx.client_ip}]", "{client_addr}": ctx.client_ip,
            "{client_name}": name, "{client_port}": str(ctx.client_port) if ctx.client_port else "",
            "i": ctx.queue_id, "{auth_authen}": ctx.user or "",
            "{auth_type}": ctx.auth_mechanism if ctx.user else "",
            "{mail_addr}": ctx.sender, "{mail_host}": ctx.sender.rpartition("@")[2],
            "{mail_mailer}": "smtp",
            "{rcpt_addr}": rcpt, "{rcpt_host}": rcpt.rpartition("@")[2] if rcpt else "",
            "{rcpt_mailer}": "smtp" if rcpt else "",
        }
        return values

    def _send_macros(self, stage: int, rcpt: str = "") -> None:
        names = self.macros.get(stage, ())
        if not names:
            return
        values = self._macro_values(rcpt)
        pairs = [(n.encode(), values[n].encode("utf-8", "replace").replace(b"\0", b" "))
                 for n in names if values.get(n)]
        if pairs:
            self.proto.send(p.C_MACRO, p.encode_macros(_STAGE_COMMAND[stage], pairs))

    async def _reply(self, timeout: float) -> tuple[bytes, bytes]:
        """The next reply that is not SMFIR_PROGRESS (which restarts the timer)."""
        while True:
            d = self.proto.next_reply()
            d.addTimeout(timeout, self.client.reactor)
            command, data = await d
            if command != p.R_PROGRESS:
                return command, data

    async def _step(self, command: bytes, data: bytes, no_reply: int, body: bool = False,
                    session_wide: bool = False) -> None:
        """Send one command; unless the milter said it will not answer it, wait for
        its verdict and end the conversation on anything but continue."""
        self.proto.send(command, data)
        if self.flags & no_reply:
            return
        reply, payload = await self._reply(self.spec.command_timeout)
        if reply == p.R_CONTINUE:
            return
        if reply == p.R_SKIP and body:
            raise _SkipBody()
        raise _Done(self._final(reply, payload), session_wide)

    def _final(self, reply: bytes, payload: bytes) -> MilterOutcome:
        if reply == p.R_ACCEPT:
            return MilterOutcome("accept")
        if reply == p.R_CONTINUE:
            return MilterOutcome("continue")
        if reply == p.R_DISCARD:
            return MilterOutcome("discard")
        if reply == p.R_REJECT:
            return MilterOutcome("reject", DEFAULT_REJECT)
        if reply == p.R_TEMPFAIL:
            return MilterOutcome("tempfail", DEFAULT_TEMPFAIL)
        if reply == p.R_REPLYCODE:
            code, status, text = p.decode_reply(reply, payload)
            kind = "tempfail" if code < 500 else "reject"
            default = DEFAULT_TEMPFAIL if kind == "tempfail" else DEFAULT_REJECT
            return MilterOutcome(kind, (code, status or default[1], text or default[2]))
        if reply in (p.R_SHUTDOWN, p.R_CONN_FAIL):
            raise MilterError(f"milter said {reply.decode()!r} (shut down / connection failure)")
        raise p.MilterProtocolError(f"unexpected reply {reply!r} here")

    async def _negotiate(self) -> None:
        self.proto.send(p.C_OPTNEG, p.encode_options(
            p.Options(p.VERSION, OFFER_ACTIONS, OFFER_PROTOCOL)))
        reply, data = await self._reply(self.spec.command_timeout)
        if reply != p.R_OPTNEG:
            raise p.MilterProtocolError(f"expected OPTNEG, got {reply!r}")
        options = p.decode_options(data)
        if not 2 <= options.version <= p.VERSION:
            raise p.MilterProtocolError(f"milter protocol version {options.version}")
        link = self.link
        link.actions = self.actions = options.actions & OFFER_ACTIONS
        link.flags = self.flags = options.protocol & OFFER_PROTOCOL
        for stage, names in options.macros:
            if stage in _STAGE_COMMAND:
                link.macros[stage] = tuple(names.decode("ascii", "replace").split())
        link.negotiated = True

    async def run(self) -> MilterOutcome:
        """The whole transaction at once: the envelope, then the content."""
        await self.envelope_from()
        if not self.flags & p.P_NORCPT:
            for rcpt in self.ctx.recipients:
                await self.envelope_rcpt(rcpt)
        return await self.content()

    async def envelope_from(self) -> None:
        """The session steps the milter has not seen on this connection, then MAIL."""
        ctx, link = self.ctx, self.link
        if link.in_transaction:  # one the client abandoned (RSET, a refused DATA)
            link.abort()
        if not link.negotiated:
            await self._negotiate()
        if not link.connected:
            link.connected = True
            if not self.flags & p.P_NOCONNECT:
                self._send_macros(p.M_CONNECT)
                await self._step(p.C_CONNECT, p.encode_connect(self._connect_info()),
                                 p.P_NR_CONN, session_wide=True)
        if ctx.helo and ctx.helo != link.helo:  # the first HELO, or a new one (EHLO again)
            link.helo = ctx.helo
            if not self.flags & p.P_NOHELO:
                self._send_macros(p.M_HELO)
                await self._step(p.C_HELO, p.encode_args(_b(ctx.helo)), p.P_NR_HELO,
                                 session_wide=True)
        link.in_transaction = True
        if not self.flags & p.P_NOMAIL:
            self._send_macros(p.M_ENVFROM)
            await self._step(p.C_MAIL, p.encode_args(
                _b(f"<{ctx.sender}>"), *(_b(a) for a in ctx.mail_params)), p.P_NR_MAIL)

    async def envelope_rcpt(self, rcpt: str) -> None:
        if not self.flags & p.P_NORCPT:
            self._send_macros(p.M_ENVRCPT, rcpt)
            await self._step(p.C_RCPT, p.encode_args(_b(f"<{rcpt}>")), p.P_NR_RCPT)

    async def content(self) -> MilterOutcome:
        """DATA, the header fields, the body and end of message."""
        ctx, proto = self.ctx, self.proto
        if not self.flags & p.P_NODATA:
            self._send_macros(p.M_DATA)
            await self._step(p.C_DATA, b"", p.P_NR_DATA)
        leading_space = bool(self.flags & p.P_HDR_LEADSPC)
        if not self.flags & p.P_NOHDRS:
            for name, value in fields_for_milter(ctx.header_block, leading_space):
                await self._step(p.C_HEADER, p.encode_header(name, value), p.P_NR_HDR)
        if not self.flags & p.P_NOEOH:
            self._send_macros(p.M_EOH)
            await self._step(p.C_EOH, b"", p.P_NR_EOH)
        if not self.flags & p.P_NOBODY and ctx.read_body is not None:
            try:
                await ctx.read_body(self._body_chunk)
                await self._body_pieces(final=True)
            except _SkipBody:
                pass
            self._pending.clear()
        self._send_macros(p.M_EOM)
        proto.send(p.C_BODYEOB)
        outcome = await self._end_of_message(leading_space)
        self.link.in_transaction = False
        return outcome

    def _body_chunk(self, chunk: bytes) -> defer.Deferred[None] | None:
        """The spool's chunks, re-cut to SMFIC_BODY packets of exactly CHUNK_SIZE
        (the rest waits for the next chunk, or ``_body_rest``)."""
        self._pending += chunk
        if len(self._pending) < p.CHUNK_SIZE:
            return None
        return defer.Deferred.fromCoroutine(self._body_pieces(final=False))

    async def _body_pieces(self, final: bool) -> None:
        while len(self._pending) >= p.CHUNK_SIZE or (final and self._pending):
            piece = bytes(self._pending[:p.CHUNK_SIZE])
            del self._pending[:p.CHUNK_SIZE]
            if self.flags & p.P_NR_BODY:  # no reply to wait for: wait for the socket
                await self.proto.writable()
            await self._step(p.C_BODY, piece, p.P_NR_BODY, body=True)

    async def _end_of_message(self, leading_space: bool) -> MilterOutcome:
        """The replies to SMFIC_BODYEOB: modifications, then one final verdict."""
        editor: HeaderEditor | None = None
        crlf = CRLFNormalizer()
        quarantine = ""
        ignored: list[str] = []
        added: list[str] = []
        removed: list[str] = []
        while True:
            reply, data = await self._reply(self.spec.eom_timeout)
            if reply in (p.R_ADDHEADER, p.R_INSHEADER, p.R_CHGHEADER):
                allowed = p.F_ADDHDRS if reply != p.R_CHGHEADER else p.F_CHGHDRS
                if not self.actions & allowed:
                    raise p.MilterProtocolError(f"{reply!r} without the negotiated action")
                change = p.decode_reply(reply, data)
                if editor is None:
                    editor = HeaderEditor(self.ctx.header_block, leading_space)
                {p.R_ADDHEADER: editor.add, p.R_INSHEADER: editor.insert,
                 p.R_CHGHEADER: editor.change}[reply](change)
                continue
            if reply == p.R_REPLBODY:
                if not self.actions & p.F_CHGBODY:
                    raise p.MilterProtocolError("REPLBODY without the negotiated action")
                if self.body is None:  # the chunks, in order, are the new body
                    self.body = Spool(self.client.reactor, directory=self.client.spool_dir)
                self.body.write(crlf.feed(data))
                continue
            if reply == p.R_QUARANTINE:
                (reason,) = p.decode_reply(reply, data) or [b""]
                quarantine = reason.decode("utf-8", "replace") or "quarantined by milter"
                continue
            if reply in (p.R_ADDRCPT, p.R_ADDRCPT_PAR, p.R_DELRCPT):
                flag = {p.R_ADDRCPT: p.F_ADDRCPT, p.R_ADDRCPT_PAR: p.F_ADDRCPT_PAR,
                        p.R_DELRCPT: p.F_DELRCPT}[reply]
                if not self.actions & flag:
                    raise p.MilterProtocolError(f"{reply!r} without the negotiated action")
                args = p.decode_reply(reply, data)
                address = _address(args[0] if args else b"")
                if address:  # (ESMTP arguments of ADDRCPT_PAR are not used)
                    (removed if reply == p.R_DELRCPT else added).append(address)
                continue
            if reply == p.R_CHGFROM:
                p.decode_reply(reply, data)  # well formed, at least
                ignored.append(reply.decode())
                continue
            outcome = self._final(reply, data)
            if outcome.action in ("continue", "accept"):
                outcome.header_block = editor.block if editor is not None else None
                outcome.body, self.body = self.body, None
                outcome.added, outcome.removed = added, removed
                if quarantine:
                    outcome.action, outcome.reason = "quarantine", quarantine
            outcome.ignored = sorted(set(ignored))
            return outcome

    def discard_body(self) -> None:
        """Forget a new body the milter sent (it refused, or failed, before the end)."""
        if self.body is not None:
            body, self.body = self.body, None
            body.close()

    def _connect_info(self) -> p.Connect:
        ctx = self.ctx
        name = _b(ctx.client_name or "unknown")
        try:
            socket.inet_pton(socket.AF_INET6, ctx.client_ip)
            family = b"6"
        except OSError:
            try:
                socket.inet_pton(socket.AF_INET, ctx.client_ip)
                family = b"4"
            except OSError:
                return p.Connect(name, b"L")
        return p.Connect(name, family, ctx.client_port, _b(ctx.client_ip))


def _address(raw: bytes) -> str:
    """``<a@b>`` (or a bare ``a@b``) as a milter names a recipient → ``a@b``."""
    text = raw.decode("utf-8", "replace").strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return text.strip() if "@" in text and not any(c in text for c in "<>\r\n ") else ""


def _b(text: str) -> bytes:
    return text.encode("utf-8", "replace").replace(b"\0", b" ")


__all__ = ["DEFAULT_MACROS", "MilterClient", "MilterError", "MilterOutcome", "MilterSpec",
           "MilterSpecError", "endpoint_string"]
