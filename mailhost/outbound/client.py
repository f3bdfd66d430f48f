"""The relay's SMTP client: Twisted's ``ESMTPClient`` with the transaction rewritten.

We keep Twisted's connection setup (greeting, EHLO/HELO, STARTTLS, AUTH PLAIN/LOGIN)
and replace the mail transaction, because the stock one cannot carry what a relay
needs:

- the body transform stuffs dots chunk by chunk and misses a ``.`` at a chunk
  boundary (TWISTED-MAIL-NOTES.md); ``DotStuffer`` keeps line state across chunks;
- it sends RSET after every message and knows no MAIL/RCPT parameters; we send SIZE,
  BODY=8BITMIME, SMTPUTF8 and the DSN parameters when the server offers them, and
  pipeline MAIL, RCPT and DATA (RFC 2920), or MAIL, RCPT and the whole small message
  as one ``BDAT LAST`` chunk when the server offers CHUNKING (RFC 3030);
- it reports one result per message; we report each recipient's reply;
- a failed STARTTLS handshake kills the attempt; with the opportunistic policy the
  session reports ``tls_failed`` so the caller reconnects without TLS.

One connection carries several messages: the protocol pulls ``Job``s from a
``JobSource`` after EHLO until the source runs dry; a source that can (the scheduler)
lets it wait ``idle_timeout`` seconds for more mail before QUIT.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import defer, protocol
from twisted.internet import error as ierror
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.mail import smtp
from twisted.protocols import basic
from twisted.python.failure import Failure

from mailhost.dotstuffing import DotStuffer
from mailhost.outbound.envelope import Envelope, RecipientState
from mailhost.outbound.routing import describe_error
from mailhost.outbound.spool import MessageFile
from mailhost.tcp import send_at_once

# Messages up to this size are sent with one read and one write.
SMALL_MESSAGE = 64 * 1024

# Outcome kinds of one recipient.
DELIVERED = "delivered"
TEMPORARY = "temporary"
PERMANENT = "permanent"


@dataclass
class Outcome:
    """What happened to one recipient in one attempt."""

    kind: str
    reply: str  # '250 2.0.0 ok', or a local description such as 'connection lost'
    # The remote accepted with DSN support: it reports success/failure from now on.
    dsn_passed: bool = False


@dataclass
class Job:
    """One message for the recipients of one domain: a single SMTP transaction."""

    envelope: Envelope
    domain: str
    recipients: list[RecipientState]
    path: str
    started: float = 0.0


class JobSource(Protocol):
    def next_job(self) -> Job | None: ...

    def job_done(self, job: Job, outcomes: dict[str, Outcome], info: dict[str, Any]) -> None: ...


class WaitingJobSource(JobSource, Protocol):
    """A source that can keep an idle connection: ``wait_job`` fires with True when
    a job may be ready, False after ``timeout`` seconds (or when stopping); cancel it
    when the connection goes away."""

    def wait_job(self, timeout: float) -> defer.Deferred: ...


@dataclass
class SessionResult:
    """How a connection went, for the caller's choice of the next MX host."""

    # The server got as far as a MAIL command (so jobs were pulled and reported).
    transacted: bool = False
    error: str = ""
    tls: bool = False
    tls_failed: bool = False
    jobs: int = 0


@dataclass
class ClientPolicy:
    """Per-connection settings chosen by the scheduler."""

    hostname: str  # our EHLO name
    mx_name: str  # the server's name (for logs, Remote-MTA and TLS verification)
    # The address and port connected to, for error texts ("[192.0.2.1]:25").
    address: str = ""
    port: int = 0
    tls: str = "opportunistic"  # opportunistic / verify / none
    tls_context: object | None = None
    username: str = ""
    password: str = ""
    allow_plain_auth: bool = False
    command_timeout: float = 300.0
    max_messages: int = 100
    # How long an idle connection waits for more mail for its domain before QUIT
    # (like Postfix's smtp_connection_cache_time_limit); 0 quits at once.
    idle_timeout: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _reply_text(code: int, resp: bytes | str) -> str:
    if isinstance(resp, bytes):
        resp = resp.decode("utf-8", "replace")
    return " ".join(f"{code} {resp}".replace("\n", " ").split())


def _xtext(value: str) -> str:
    """RFC 3461 xtext encoding for ENVID/ORCPT values."""
    out = []
    for ch in value:
        o = ord(ch)
        if 33 <= o <= 126 and ch not in "+=":
            out.append(ch)
        else:
            out.extend(f"+{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


class RelayClient(smtp.ESMTPClient):
    """ESMTP client that relays queued jobs; see the module docstring."""

    debug = False

    def __init__(self, policy: ClientPolicy, source: JobSource, done: defer.Deferred) -> None:
        secret = policy.password.encode() if policy.username else None
        context = policy.tls_context if policy.tls != "none" else None
        smtp.ESMTPClient.__init__(self, secret, context, policy.hostname)
        self.policy = policy
        self.source = source
        self.timeout = policy.command_timeout
        self.requireTransportSecurity = policy.tls == "verify"
        if policy.username:
            self.requireAuthentication = True
            user = policy.username.encode()
            self.registerAuthenticator(smtp.PLAINAuthenticator(user))
            self.registerAuthenticator(smtp.LOGINAuthenticator(user))
        self.result = SessionResult()
        self._done = done
        self.extensions: dict[bytes, bytes | None] = {}
        self._tls_handshaking = False
        self.job: Job | None = None
        self._outcomes: dict[str, Outcome] = {}
        self._accepted: list[str] = []
        self._pending: deque[Callable[[int, bytes], None]] = deque()
        self._mail_ok = False
        self._data_pipelined = False
        self._idle: defer.Deferred | None = None

    # Connection setup: Twisted's, with the hooks a relay needs.

    def connectionMade(self) -> None:  # noqa: N802
        send_at_once(self.transport)
        super().connectionMade()

    def esmtpState_serverConfig(self, code: int, resp: bytes) -> None:
        if self._tls_handshaking:
            self._tls_handshaking = False
            self.result.tls = True
        self.extensions = {}
        for line in resp.splitlines()[1:]:
            word, _, value = line.partition(b" ")
            self.extensions[word.upper()] = value or None
        super().esmtpState_serverConfig(code, resp)

    def smtpState_helo(self, code: int, resp: bytes) -> None:
        # EHLO refused; plain HELO offers no extensions. Twisted leaves the failure
        # handler pointing here, which would send HELO forever: stop after one.
        self.extensions = {}
        super().smtpState_helo(code, resp)
        self._failresponse = self.smtpConnectionFailed

    def tryTLS(self, code: int, resp: bytes, items: dict) -> None:
        if (
            not self._tlsMode
            and self.context is not None
            and b"STARTTLS" in items
            and self.policy.tls == "opportunistic"
        ):
            # A 4xx/5xx to STARTTLS: carry on in plaintext rather than fail.
            self._expected = [220]
            self._okresponse = self.esmtpState_starttls
            self._failresponse = lambda c, r: self.authenticate(c, r, items)
            self.sendLine(b"STARTTLS")
            return
        super().tryTLS(code, resp, items)

    def esmtpState_starttls(self, code: int, resp: bytes) -> None:
        self._tls_handshaking = True
        super().esmtpState_starttls(code, resp)

    def authenticate(self, code: int, resp: bytes, items: dict) -> None:
        if self.secret and not self._tlsMode and not self.policy.allow_plain_auth:
            self.sendError(
                smtp.AUTHRequiredError(
                    530, b"refusing to send credentials without TLS", self.log.str()
                )
            )
            return
        super().authenticate(code, resp, items)

    # The transaction.

    def smtpState_from(self, code: int, resp: bytes) -> None:
        self._pending.clear()
        if self.result.jobs >= self.policy.max_messages:
            self._disconnectFromServer()
            return
        job = self.source.next_job()
        if job is None:
            wait = getattr(self.source, "wait_job", None)
            if wait is not None and self.policy.idle_timeout > 0 and code >= 0:
                self._wait_idle(wait)
            else:
                self._disconnectFromServer()
            return
        self.result.transacted = True
        self.result.jobs += 1
        self.job = job
        self._outcomes = {}
        self._accepted = []
        self._mail_ok = False
        env = job.envelope
        utf8 = not env.sender.isascii() or any(not r.address.isascii() for r in job.recipients)
        if utf8 and b"SMTPUTF8" not in self.extensions:
            self._finish_job(
                {
                    r.address: Outcome(
                        PERMANENT, "553 5.6.7 the server does not support SMTPUTF8 addresses"
                    )
                    for r in job.recipients
                },
                rset=False,
            )
            return
        dsn = b"DSN" in self.extensions
        mail = f"MAIL FROM:<{env.sender}>"
        if b"SIZE" in self.extensions and env.size:
            mail += f" SIZE={env.size}"
        if b"8BITMIME" in self.extensions:
            mail += " BODY=8BITMIME"
        if utf8:
            mail += " SMTPUTF8"
        if dsn and env.ret:
            mail += f" RET={env.ret}"
        if dsn and env.envid:
            mail += f" ENVID={_xtext(env.envid)}"
        lines = [mail.encode("utf-8")]
        self._pending.append(self._on_mail)
        self._data_pipelined = False
        for r in job.recipients:
            rcpt = f"RCPT TO:<{r.address}>"
            if dsn and r.notify:
                rcpt += " NOTIFY=" + ",".join(r.notify)
            if dsn and r.orcpt:
                kind, _, value = r.orcpt.partition(";")
                rcpt += f" ORCPT={kind};{_xtext(value)}" if value else ""
            lines.append(rcpt.encode("utf-8"))
            self._pending.append(self._rcpt_handler(r.address))
        self._expected = range(0, 1000)
        self._okresponse = self._on_reply
        self._failresponse = self._on_reply
        if b"PIPELINING" in self.extensions:
            body = self._small_body() if b"CHUNKING" in self.extensions else None
            if body is not None:
                # RFC 3030: the whole small message as one BDAT LAST chunk, pipelined
                # with MAIL and RCPT: one round trip per message and no dot-stuffing.
                lines.append(b"BDAT %d LAST" % len(body))
                self._pending.append(self._on_bdat_reply)
            else:
                # DATA may end the group (RFC 2920 §3.1): one round trip fewer.
                lines.append(b"DATA")
                self._pending.append(self._on_data_reply)
                body = b""
            self._data_pipelined = True
            self.transport.write(b"".join(line + b"\r\n" for line in lines) + body)
        else:
            self._queued_lines = deque(lines[1:])
            self.sendLine(lines[0])

    def _wait_idle(self, wait: Callable[[float], defer.Deferred]) -> None:
        """Keep the connection for a while: opening another costs a route lookup, a
        connect, the greeting and EHLO on both ends, for mail that often follows soon."""
        # A reply now is unsolicited (a 421 before the server hangs up): just go.
        self._expected = range(0, 1000)
        self._okresponse = self._failresponse = self._idle_reply
        d = self._idle = wait(self.policy.idle_timeout)

        def woken(more: bool) -> None:
            if self._idle is not d:
                return  # the connection went away meanwhile
            self._idle = None
            # code -1: if the source ran dry again, QUIT instead of waiting again.
            self.smtpState_from(0 if more else -1, b"")

        d.addCallback(woken)
        d.addErrback(lambda f: f.trap(defer.CancelledError))

    def _idle_reply(self, code: int, resp: bytes) -> None:
        self._stop_idle()
        self.transport.loseConnection()

    def _stop_idle(self) -> None:
        d, self._idle = self._idle, None
        if d is not None:
            d.cancel()

    def _on_reply(self, code: int, resp: bytes) -> None:
        if not self._pending:
            # A reply nobody asked for (e.g. an unsolicited 421): give up on this server.
            self.sendError(smtp.SMTPProtocolError(code, resp, self.log.str()))
            return
        handler = self._pending.popleft()
        handler(code, resp)
        queued = getattr(self, "_queued_lines", None)
        if queued and b"PIPELINING" not in self.extensions and self._pending:
            if self._mail_ok:
                self.sendLine(queued.popleft())
            else:
                # MAIL failed: the RCPTs need not be sent at all.
                while self._pending:
                    self._pending.popleft()(503, b"not sent: MAIL FROM failed")
        if not self._pending and self.job is not None and not self._data_pipelined:
            self._after_rcpts()

    def _on_mail(self, code: int, resp: bytes) -> None:
        self._mail_ok = 200 <= code < 300
        if not self._mail_ok:
            text = _reply_text(code, resp)
            kind = PERMANENT if code >= 500 else TEMPORARY
            assert self.job is not None
            for r in self.job.recipients:
                self._outcomes[r.address] = Outcome(kind, text)

    def _rcpt_handler(self, address: str) -> Callable[[int, bytes], None]:
        def handle(code: int, resp: bytes) -> None:
            if not self._mail_ok:
                return
            if 200 <= code < 300:
                self._accepted.append(address)
            else:
                kind = PERMANENT if code >= 500 else TEMPORARY
                self._outcomes[address] = Outcome(kind, _reply_text(code, resp))

        return handle

    def _after_rcpts(self) -> None:
        self._queued_lines = None
        if not self._accepted:
            self._finish_job(self._outcomes, rset=True)
            return
        self._expected = [354]
        self._okresponse = self._send_body
        self._failresponse = self._data_failed
        self.sendLine(b"DATA")

    def _on_data_reply(self, code: int, resp: bytes) -> None:
        """The reply to a pipelined DATA."""
        if code == 354:
            if self._accepted:
                self._send_body(code, resp)
                return
            # A server that said 354 with no recipient: send an empty message, discard it.
            self.transport.write(b".\r\n")
            self._expected = range(0, 1000)
            self._okresponse = self._failresponse = lambda c, r: self._finish_job(
                self._outcomes, rset=True
            )
            return
        if self._accepted:
            self._data_failed(code, resp)
        else:
            self._finish_job(self._outcomes, rset=True)

    def _small_body(self) -> bytes | None:
        """The message for a BDAT chunk, when small enough to read at once (one
        bounded read, like ``_send_body``); None sends it with DATA instead."""
        assert self.job is not None
        env = self.job.envelope
        if env.size > SMALL_MESSAGE:
            return None
        try:
            with MessageFile(self.job.path) as f:
                f.seek(env.offset)
                data = f.read(SMALL_MESSAGE + 1)
        except OSError:
            return None  # the DATA path reports the vanished file
        if len(data) > SMALL_MESSAGE:
            return None
        if data and not data.endswith(b"\r\n"):
            data += b"\r\n"  # as DotStuffer.terminator does for DATA
        return data

    def _on_bdat_reply(self, code: int, resp: bytes) -> None:
        """The reply to the pipelined ``BDAT LAST``: the message's final reply."""
        if self._accepted:
            self._on_final_reply(code, resp)
        else:
            # No recipient: the server consumed the chunk and refused it (RFC 3030 §2).
            self._finish_job(self._outcomes, rset=True)

    def _data_failed(self, code: int, resp: bytes) -> None:
        text = _reply_text(code, resp)
        kind = PERMANENT if code >= 500 else TEMPORARY
        for address in self._accepted:
            self._outcomes[address] = Outcome(kind, text)
        self._finish_job(self._outcomes, rset=True)

    def _send_body(self, code: int, resp: bytes) -> None:
        assert self.job is not None
        stuffer = DotStuffer()

        def transform(chunk: bytes) -> bytes:
            self.resetTimeout()
            return stuffer(chunk)

        self._expected = range(0, 1000)
        self._okresponse = self._on_final_reply
        self._failresponse = self._on_final_reply
        offset = self.job.envelope.offset  # past the envelope embedded in the file
        try:
            # MessageFile: a message deleted meanwhile has its file recycled, and
            # another message's bytes must never follow ours.
            f = MessageFile(self.job.path)
            f.seek(offset)
            if self.job.envelope.size <= SMALL_MESSAGE:
                # One bounded read and one write for the common small message.
                with f:
                    data = f.read(SMALL_MESSAGE + 1)
                if len(data) <= SMALL_MESSAGE:
                    self.transport.write(stuffer(data) + stuffer.terminator())
                    return
                f = MessageFile(self.job.path)  # it grew: stream it after all
                f.seek(offset)
        except OSError as e:
            # The spool file is gone (deleted by `mailhost queue delete`): abandon.
            self._abandon(f"spool file unreadable: {e}")
            return
        reader = _ReadOrStop(f)
        sender = basic.FileSender()
        d = sender.beginFileTransfer(reader, self.transport, transform)

        def finished(_: object) -> None:
            f.close()
            if reader.error is not None:
                self._abandon(f"spool file unreadable: {reader.error}")
                return
            self.transport.write(stuffer.terminator())

        def failed(err: Failure) -> None:
            f.close()
            self.sendError(smtp.SMTPClientError(-1, str(err.value).encode()))

        d.addCallbacks(finished, failed)

    def _abandon(self, text: str) -> None:
        """Give up on the message in the middle of DATA: drop the connection without
        the final dot, so the server discards what it got (a QUIT here would only be
        one more line of the message, and wait for a reply that never comes)."""
        if not self.result.error:
            self.result.error = text
        self._fail_current(text)
        self.transport.abortConnection()

    def _on_final_reply(self, code: int, resp: bytes) -> None:
        text = _reply_text(code, resp)
        if 200 <= code < 300:
            kind = DELIVERED
        else:
            kind = PERMANENT if code >= 500 else TEMPORARY
        dsn = b"DSN" in self.extensions
        for address in self._accepted:
            self._outcomes[address] = Outcome(kind, text, dsn_passed=dsn and kind == DELIVERED)
        self._finish_job(self._outcomes, rset=kind != DELIVERED)

    def _finish_job(self, outcomes: dict[str, Outcome], rset: bool) -> None:
        job, self.job = self.job, None
        assert job is not None
        self.source.job_done(job, outcomes, self._info())
        if rset:
            self.sendLine(b"RSET")
            self._expected = range(0, 1000)
            self._okresponse = self.smtpState_from
            self._failresponse = self.smtpState_from
        else:
            self.smtpState_from(0, b"")

    def _info(self) -> dict[str, Any]:
        return {"mx": self.policy.mx_name, "tls": bool(self._tlsMode)}

    # Failures.

    def sendError(self, exc: Exception) -> None:
        if not self.result.error:
            code = getattr(exc, "code", -1)
            resp = getattr(exc, "resp", None)
            if isinstance(code, int) and code > 0 and resp:
                self.result.error = _reply_text(code, resp)
            else:
                msg = resp if isinstance(resp, bytes | str) and resp else str(exc)
                if isinstance(msg, bytes):
                    msg = msg.decode("utf-8", "replace")
                self.result.error = " ".join(str(msg).split())
        self._fail_current(self.result.error)
        super().sendError(exc)

    def timeoutConnection(self) -> None:
        self.result.error = (
            f"timeout after {self.policy.command_timeout:g} s waiting for the server"
        )
        self._fail_current(self.result.error)
        self.transport.abortConnection()

    def _fail_current(self, text: str) -> None:
        if self.job is not None:
            job, self.job = self.job, None
            outcomes = dict(self._outcomes)
            for r in job.recipients:
                if r.address not in outcomes or r.address in self._accepted:
                    outcomes[r.address] = Outcome(TEMPORARY, text)
            self.source.job_done(job, outcomes, self._info())

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._stop_idle()
        super().connectionLost(reason)
        if self._tls_handshaking:
            self.result.tls_failed = True
            self.result.error = self.result.error or "TLS handshake failed"
        if not self.result.error and not reason.check(ierror.ConnectionDone):
            self.result.error = f"connection lost: {reason.getErrorMessage()}"
        self._fail_current(self.result.error or "connection closed by the server")
        if self._done is not None:
            d, self._done = self._done, None
            d.callback(self.result)


class _ReadOrStop:
    """A file for ``FileSender`` that ends the transfer at a read error, keeping it
    for the caller (raised inside the producer, it would escape to the reactor)."""

    def __init__(self, f: MessageFile) -> None:
        self._f = f
        self.error: OSError | None = None

    def read(self, size: int) -> bytes:
        if self.error is not None:
            return b""
        try:
            return self._f.read(size)
        except OSError as e:
            self.error = e
            return b""


class _RelayFactory(protocol.Factory):
    def __init__(self, policy: ClientPolicy, source: JobSource, done: defer.Deferred) -> None:
        self.policy = policy
        self.source = source
        self.done = done

    def buildProtocol(self, addr: object) -> RelayClient:
        p = RelayClient(self.policy, self.source, self.done)
        p.factory = self
        return p


async def run_session(
    endpoint: IStreamClientEndpoint,
    policy: ClientPolicy,
    source: JobSource,
    track: set[RelayClient] | None = None,
) -> SessionResult:
    """Connect, relay jobs until ``source`` runs dry, and report how it went.
    ``track`` holds the live protocol, so a stopping service can abort it."""
    done: defer.Deferred = defer.Deferred()
    try:
        proto = await endpoint.connect(_RelayFactory(policy, source, done))
    except Exception as e:  # ConnectError, TimeoutError, DNS lookup errors
        where = policy.mx_name
        if policy.address:
            where += f" [{policy.address}]" + (f":{policy.port}" if policy.port else "")
        return SessionResult(error=f"cannot connect to {where}: {describe_error(e)}")
    if track is not None:
        track.add(proto)
    try:
        return await done
    finally:
        if track is not None:
            track.discard(proto)
