"""The relay's SMTP client: our own protocol on ``LineReceiver`` and ``TimeoutMixin``.

Why not Twisted's ``ESMTPClient``: its transaction sends RSET after every message,
knows no MAIL/RCPT parameters, pipelining or BDAT, stuffs dots chunk by chunk (and
misses a ``.`` at a chunk boundary), keeps every line of a multi-line reply, restarts
its one timeout on each line, and dispatches any reply to whatever handler is current,
so a server that sent ``354`` and ``250`` together had its ``250`` taken as the final
reply while the body was still being sent (issue 21). The subclass that fixed those
overrode most of the class through its private attributes. Here the whole session is
one small state machine:

- **Replies** are read by ``ReplyReader``: strict syntax (``2500 ok`` and ``abc`` are
  errors, not ``250``), at most ``reply_max_lines`` lines and ``reply_max_bytes``
  octets, and one timer per expected reply that continuation lines do not restart.
- **Timeouts per stage** (RFC 5321 §4.5.3.2): greeting, each command (MAIL, RCPT and
  the rest), DATA initiation, each data block (the transport taking the next chunk),
  and the final reply after the dot or ``BDAT LAST`` (10 minutes by default: a slow
  content scanner must not get the message twice).
- **Nothing answers out of turn.** Replies are matched to the commands we sent, in
  order; a reply nobody asked for, a reply to the wrong command (``354`` to MAIL, ``250``
  to DATA), or any line at all between ``354`` and our final dot ends the session and
  fails its transaction as temporary. The body starts after every line of the batch
  that carried the ``354`` has been read, and each new transaction after the batch that
  ended the previous one, so a server speaking ahead is caught rather than believed.
  Nothing is marked delivered before the final dot (or the BDAT chunk) is written and
  its reply read.
- **The body** streams through a push producer in bounded chunks (body_sender.py), so
  a 100 MB message costs a chunk or two of memory. Messages up to ``SMALL_MESSAGE``
  take one read, as one ``BDAT n LAST`` pipelined with MAIL and RCPT when the server
  offers CHUNKING and PIPELINING (RFC 3030; one round trip per message).
- **Connection setup:** EHLO, HELO if EHLO is refused; STARTTLS per the TLS policy
  (``opportunistic`` carries on in plaintext after a refused STARTTLS and reports a
  failed handshake as ``tls_failed`` for the caller's plaintext retry; ``verify``
  requires it; DANE and MTA-STS decide through client_tls.py); AUTH PLAIN or LOGIN for
  a smarthost, never without TLS unless allowed.
  Lines that follow ``220`` to STARTTLS in the same read are an injection
  (CVE-2011-0411's pattern) and end the session.

One connection carries several messages: the protocol pulls ``Job``s (jobs.py) from a
``JobSource`` until it runs dry; a ``WaitingJobSource`` (the scheduler) lets it wait
``idle_timeout`` seconds for more mail before QUIT. Results are per recipient.
"""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer, protocol
from twisted.internet import error as ierror
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from mailhost.outbound import client_tls
from mailhost.outbound.body_sender import SMALL_MESSAGE, BodySender, read_small_body
from mailhost.outbound.client_policy import ClientPolicy
from mailhost.outbound.envelope_commands import mail_command, needs_smtputf8, rcpt_command
from mailhost.outbound.jobs import (
    DELIVERED,
    PERMANENT,
    TEMPORARY,
    Job,
    JobSource,
    Outcome,
    SessionResult,
    WaitingJobSource,
    failure_kind,
)
from mailhost.outbound.replies import Reply, ReplyError, ReplyReader, show_line
from mailhost.outbound.routing import describe_error
from mailhost.outbound.spool import message_reader
from mailhost.outbound.wire import DataEncoder
from mailhost.tcp import send_at_once

# The relay client's public face: what the mail view's release and the outbound
# service take from here (the jobs, outcomes and policy are defined in jobs.py and
# client_policy.py).
__all__ = ["DELIVERED", "PERMANENT", "TEMPORARY", "ClientPolicy", "Job", "Outcome",
           "RelayClient", "SessionResult", "run_session"]

Handler = Callable[[Reply], None]

# What we wait for in each stage, for error texts.
_WAITING = {
    "greeting": "waiting for the greeting",
    "DATA": "waiting for the reply to DATA",
    "final": "waiting for the final reply to the message",
    "body": "sending the message (the server stopped reading)",
}


class RelayClient(LineReceiver, TimeoutMixin):
    """The relay's SMTP session; see the module docstring."""

    delimiter = b"\n"  # a CR before it is stripped by ReplyReader
    # The connected TCP or TLS transport (also ITCPTransport, ITLSTransport, IConsumer,
    # IPushProducer); Twisted declares only ITransport | None.
    transport: Any

    def __init__(
        self,
        policy: ClientPolicy,
        source: JobSource,
        done: defer.Deferred | None,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.policy = policy
        self.source = source
        self.MAX_LENGTH = max(policy.reply_max_bytes, 512)
        self.result = SessionResult()
        self.extensions: dict[str, str] = {}
        self.job: Job | None = None
        self._done = done
        self._replies = ReplyReader(policy.reply_max_lines, policy.reply_max_bytes)
        self._pending: deque[tuple[str, Handler]] = deque()
        self._stage = "greeting"
        self._tls = False
        self._tls_handshaking = False
        self._closed = False  # we ended the session: ignore anything more
        self._quitting = False
        self._in_batch = False
        self._after_batch: list[Callable[[], None]] = []
        self._in_body = False  # from the 354 until our final dot is written
        self._body: BodySender | None = None
        self._idle: defer.Deferred | None = None
        self._outcomes: dict[str, Outcome] = {}
        self._accepted: list[str] = []
        self._mail_ok = False
        self._rcpt_lines: deque[tuple[bytes, Handler]] = deque()

    # TimeoutMixin's hook: timers run on our reactor (a task.Clock in tests).
    def callLater(self, period: float, func: Callable[[], None]) -> Any:  # noqa: N802
        return self.reactor.callLater(period, func)

    # Reading.

    def connectionMade(self) -> None:  # noqa: N802
        send_at_once(self.transport)
        self._expect("greeting", self._on_greeting)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._closed:
            return
        self._in_batch = True
        try:
            super().dataReceived(data)
        finally:
            self._in_batch = False
        while self._after_batch and not self._closed:
            self._after_batch.pop(0)()
        self._after_batch.clear()

    def _after_this_read(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once every line of the current read has been handled (at once
        outside a read): a line the server sent before hearing our next command must
        meet the state we were in, not the one that command starts."""
        if self._in_batch:
            self._after_batch.append(fn)
        else:
            fn()

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        if self._closed:
            return
        mx = self.policy.mx_name
        if self._in_body:
            self._fatal(
                f"{mx} replied before the end of the message ({show_line(line)}); "
                "the transaction is abandoned"
            )
            return
        if not self._pending:
            if self._tls_handshaking:
                self._fatal(
                    f"TLS handshake with {mx} failed: it sent {show_line(line)} in plaintext "
                    "after its 220 to STARTTLS"
                )
                return
            if self._idle is not None:
                # Unsolicited while idle (a 421 before the server hangs up): just go.
                self._stop_idle()
                self._close()
                return
            self._fatal(f"unexpected reply from {mx} ({show_line(line)}) when no reply was due")
            return
        stage = self._pending[0][0]
        try:
            reply = self._replies.feed(line)
        except ReplyError as e:
            self._fatal(f"{e} from {mx} while {self._waiting_for(stage)}")
            return
        if reply is None:
            return
        _stage, handler = self._pending.popleft()
        self._arm()  # the next pipelined reply's timer, or none
        handler(reply)

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802
        stage = self._pending[0][0] if self._pending else self._stage
        self._fatal(
            f"reply line from {self.policy.mx_name} longer than {self.MAX_LENGTH} octets "
            f"while {self._waiting_for(stage)}"
        )

    def _waiting_for(self, stage: str) -> str:
        return _WAITING.get(stage, f"waiting for the reply to {stage}")

    # Writing.

    def _expect(self, stage: str, handler: Handler) -> None:
        self._pending.append((stage, handler))
        if len(self._pending) == 1:
            self._arm()

    def _arm(self) -> None:
        """The timer of the reply now awaited (or of the body being sent)."""
        if self._pending:
            stage = self._pending[0][0]
        elif self._body is not None:
            stage = "body"
        else:
            self.setTimeout(None)
            return
        self._stage = stage
        self.setTimeout(self._timeout_for(stage))

    def _timeout_for(self, stage: str) -> float:
        p = self.policy
        if stage == "greeting":
            return p.greeting_timeout
        if stage == "DATA":
            return p.data_init_timeout
        if stage == "body":
            return p.data_block_timeout
        if stage == "final":
            return p.final_timeout
        return p.command_timeout

    def _send(self, line: bytes, stage: str, handler: Handler) -> None:
        self.transport.write(line + b"\r\n")
        self._expect(stage, handler)

    # Failures and the end.

    def timeoutConnection(self) -> None:  # noqa: N802
        if self._closed:
            return
        if self._quitting:
            self._closed = True
            self.transport.abortConnection()
            return
        self._fatal(
            f"timeout after {self.timeOut:g} s {self._waiting_for(self._stage)} "
            f"from {self.policy.mx_name}"
        )

    def _fatal(self, text: str) -> None:
        """End the session now: the state is confused or the server broke a limit. The
        transaction in flight fails as temporary; no QUIT (it could be read as part
        of a message, or answer a reply we no longer trust)."""
        if self._closed:
            return
        self._closed = True
        if not self.result.error:
            self.result.error = text
        self._stop_body()
        self._stop_idle()
        self.setTimeout(None)
        self._fail_current(text)
        self.transport.abortConnection()

    def _give_up(self, text: str) -> None:
        """The server refused the session (greeting, EHLO, TLS, AUTH): say why, QUIT."""
        if not self.result.error:
            self.result.error = text
        self._quit()

    def _quit(self) -> None:
        if self._closed or self._quitting:
            return
        self._quitting = True
        self._send(b"QUIT", "QUIT", lambda reply: self._close())

    def _close(self) -> None:
        self._closed = True
        self.setTimeout(None)
        self.transport.loseConnection()

    def _fail_current(self, text: str) -> None:
        if self.job is not None:
            job, self.job = self.job, None
            outcomes = dict(self._outcomes)
            for r in job.recipients:
                if r.address not in outcomes or r.address in self._accepted:
                    outcomes[r.address] = Outcome(TEMPORARY, text)
            self.source.job_done(job, outcomes, self._info())

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        self.setTimeout(None)
        self._stop_idle()
        self._stop_body()
        mx = self.policy.mx_name
        if self._tls_handshaking:
            self.result.tls_failed = True
            detail = " ".join(reason.getErrorMessage().split())[:200]
            error = self.result.error or f"TLS handshake with {mx} failed: {detail}"
            self.result.error, self.result.tls_problem = client_tls.handshake_failed(
                self.policy, error, self.result.tls_problem)
        if not self._closed and not self.result.error:
            if self._replies.partial:
                self.result.error = (
                    f"{mx} closed the connection in the middle of a reply "
                    f"(after {self._replies.partial} lines)"
                )
            elif self._in_body:
                self.result.error = f"{mx} closed the connection while we sent the message"
            elif self._pending and not self._quitting:
                stage = self._pending[0][0]
                self.result.error = f"{mx} closed the connection while {self._waiting_for(stage)}"
            elif not reason.check(ierror.ConnectionDone):
                self.result.error = f"connection to {mx} lost: {reason.getErrorMessage()}"
        self._closed = True
        self._fail_current(self.result.error or f"connection closed by {mx}")
        if self._done is not None:
            d, self._done = self._done, None
            d.callback(self.result)

    def _info(self) -> dict[str, Any]:
        return {"mx": self.policy.mx_name, "tls": self._tls}

    # Connection setup.

    def _on_greeting(self, reply: Reply) -> None:
        if reply.code != 220:
            self._give_up(reply.text)
            return
        self._send(b"EHLO " + self.policy.hostname.encode("idna"), "EHLO", self._on_ehlo)

    def _on_ehlo(self, reply: Reply) -> None:
        if 200 <= reply.code < 300:
            self.extensions = {}
            for line in reply.lines[1:]:
                word, _, value = line.partition(" ")
                self.extensions[word.upper()] = value
            if self._tls_handshaking:
                self._tls_handshaking = False
                self._tls = self.result.tls = True
                if not self._obey(client_tls.certificate_checked(self.policy)):
                    return
            self._after_hello()
        elif 500 <= reply.code < 600 and not self._tls:
            self._send(b"HELO " + self.policy.hostname.encode("idna"), "HELO", self._on_helo)
        else:
            self._give_up(reply.text)

    def _on_helo(self, reply: Reply) -> None:
        if not 200 <= reply.code < 300:
            self._give_up(reply.text)
            return
        self.extensions = {}  # plain HELO offers no extensions
        self._after_hello()

    def _after_hello(self) -> None:
        p = self.policy
        if not self._tls and p.tls in ("opportunistic", "verify") and p.tls_context is not None:
            if "STARTTLS" in self.extensions:
                self._send(b"STARTTLS", "STARTTLS", self._on_starttls)
                return
            if not self._obey(client_tls.without_starttls(p)):
                return
        elif not self._tls and p.tls == "verify":
            self._give_up(f"no TLS context for {p.mx_name} (TLS policy verify)")
            return
        self._authenticate()

    def _obey(self, verdict: client_tls.Verdict) -> bool:
        """Record what a TLS decision found; False when it gave the session up."""
        if verdict.problem is not None:
            self.result.tls_problem = verdict.problem
        if verdict.give_up:
            self._give_up(verdict.give_up)
            return False
        return True

    def _on_starttls(self, reply: Reply) -> None:
        if reply.code == 220:
            self._tls_handshaking = True
            self.transport.startTLS(self.policy.tls_context)
            # Anything more in this read came in plaintext after the 220: with no
            # reply due until the EHLO is sent, it ends the session.
            self._after_this_read(
                lambda: self._send(
                    b"EHLO " + self.policy.hostname.encode("idna"), "EHLO", self._on_ehlo
                )
            )
        elif self._obey(client_tls.starttls_refused(self.policy, reply)):
            self._authenticate()  # refused: carry on in plaintext

    def _authenticate(self) -> None:
        p = self.policy
        if not p.username:
            self._next_message()
            return
        if not self._tls and not p.allow_plain_auth:
            self._give_up(f"refusing to send credentials to {p.mx_name} without TLS")
            return
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms:
            token = base64.b64encode(b"\0" + p.username.encode() + b"\0" + p.password.encode())
            self._send(b"AUTH PLAIN " + token, "AUTH", self._on_auth)
        elif "LOGIN" in mechanisms:
            self._send(b"AUTH LOGIN", "AUTH", self._on_login_user)
        else:
            self._give_up(f"{p.mx_name} offers no AUTH PLAIN or LOGIN")

    def _on_login_user(self, reply: Reply) -> None:
        if reply.code != 334:
            self._on_auth(reply)
            return
        self._send(base64.b64encode(self.policy.username.encode()), "AUTH", self._on_login_pass)

    def _on_login_pass(self, reply: Reply) -> None:
        if reply.code != 334:
            self._on_auth(reply)
            return
        self._send(base64.b64encode(self.policy.password.encode()), "AUTH", self._on_auth)

    def _on_auth(self, reply: Reply) -> None:
        if reply.code == 235:
            self._next_message()
        else:
            self._give_up(f"authentication at {self.policy.mx_name} failed: {reply.text}")

    # The transaction.

    def _next_message(self, may_wait: bool = True) -> None:
        if self._closed:
            return
        if self.result.jobs >= self.policy.max_messages:
            self._quit()
            return
        job = self.source.next_job()
        if job is None:
            if may_wait and self.policy.idle_timeout > 0 and isinstance(
                self.source, WaitingJobSource
            ):
                self._wait_idle(self.source)
            else:
                self._quit()
            return
        self.result.transacted = True
        self.result.jobs += 1
        self.job = job
        self._outcomes = {}
        self._accepted = []
        self._mail_ok = False
        env = job.envelope
        utf8 = needs_smtputf8(env, job.recipients)
        if utf8 and "SMTPUTF8" not in self.extensions:
            text = "553 5.6.7 the server does not support SMTPUTF8 addresses"
            self._finish_job({r.address: Outcome(PERMANENT, text) for r in job.recipients},
                             rset=False)
            return
        mail = mail_command(env, self.extensions, utf8)
        rcpts: list[tuple[bytes, Handler]] = [
            (rcpt_command(r, self.extensions), self._rcpt_handler(r.address))
            for r in job.recipients
        ]
        if "PIPELINING" not in self.extensions:
            # One command at a time: the RCPTs follow a successful MAIL.
            self._rcpt_lines = deque(rcpts)
            self._send(mail.encode("utf-8"), "MAIL", self._on_mail_alone)
            return
        if "CHUNKING" in self.extensions and env.size <= SMALL_MESSAGE:
            d = defer.Deferred.fromCoroutine(read_small_body(job.path, env.offset, env.size))
            d.addCallback(lambda body: self._pipeline(job, mail, rcpts, body))
            d.addErrback(lambda f: self._fatal(f"relaying failed: {f.value}"))
            return
        self._pipeline(job, mail, rcpts, None)

    def _pipeline(self, job: Job, mail: str, rcpts: list[tuple[bytes, Handler]],
                  body: bytes | None) -> None:
        """MAIL, the RCPTs and the message (``body``: one BDAT LAST) or DATA, pipelined."""
        if self._closed or self.job is not job:
            return
        out = [mail.encode("utf-8") + b"\r\n"]
        self._expect("MAIL", self._on_mail)
        for line, handler in rcpts:
            out.append(line + b"\r\n")
            self._expect("RCPT", handler)
        if body is not None:
            # RFC 3030: the whole small message as one BDAT LAST chunk, pipelined with
            # MAIL and RCPT: one round trip per message and no dot-stuffing.
            out.append(b"BDAT %d LAST\r\n" % len(body))
            out.append(body)
            self._expect("final", self._on_bdat_reply)
        else:
            # DATA may end the group (RFC 2920 §3.1): one round trip fewer.
            out.append(b"DATA\r\n")
            self._expect("DATA", self._on_data_reply)
        self.transport.write(b"".join(out))

    def _wait_idle(self, source: WaitingJobSource) -> None:
        """Keep the connection for a while: opening another costs a route lookup, a
        connect, the greeting and EHLO on both ends, for mail that often follows soon."""
        self.setTimeout(None)
        d = self._idle = source.wait_job(self.policy.idle_timeout)

        def woken(more: bool) -> None:
            if self._idle is not d:
                return  # the connection went away meanwhile
            self._idle = None
            # Woken for nothing (the source ran dry again): QUIT rather than wait again.
            self._next_message(may_wait=bool(more))

        d.addCallback(woken)
        d.addErrback(lambda f: f.trap(defer.CancelledError))

    def _stop_idle(self) -> None:
        d, self._idle = self._idle, None
        if d is not None:
            d.cancel()

    def _on_mail(self, reply: Reply) -> None:
        self._mail_ok = 200 <= reply.code < 300
        if self._mail_ok:
            return
        kind = failure_kind(reply.code)
        if kind is None:
            self._fatal(f"unexpected reply to MAIL from {self.policy.mx_name}: {reply.text}")
            return
        assert self.job is not None
        for r in self.job.recipients:
            self._outcomes[r.address] = Outcome(kind, reply.text)

    def _on_mail_alone(self, reply: Reply) -> None:
        self._on_mail(reply)
        if self._closed:
            return
        if not self._mail_ok:
            self._finish_job(self._outcomes, rset=True)
            return
        self._next_rcpt()

    def _next_rcpt(self) -> None:
        if not self._rcpt_lines:
            self._after_rcpts()
            return
        line, handler = self._rcpt_lines.popleft()

        def then(reply: Reply) -> None:
            handler(reply)
            if not self._closed:
                self._next_rcpt()

        self._send(line, "RCPT", then)

    def _rcpt_handler(self, address: str) -> Handler:
        def handle(reply: Reply) -> None:
            if 200 <= reply.code < 300:
                if self._mail_ok:
                    self._accepted.append(address)
                return
            kind = failure_kind(reply.code)
            if kind is None:
                self._fatal(f"unexpected reply to RCPT from {self.policy.mx_name}: {reply.text}")
            elif self._mail_ok:
                self._outcomes[address] = Outcome(kind, reply.text)

        return handle

    def _after_rcpts(self) -> None:
        """Without pipelining: DATA once the RCPTs are answered."""
        if not self._accepted:
            self._finish_job(self._outcomes, rset=True)
            return
        self._send(b"DATA", "DATA", self._on_data_reply)

    def _on_data_reply(self, reply: Reply) -> None:
        if reply.code == 354:
            self._in_body = True
            if self._accepted:
                self._after_this_read(self._start_body)
            else:
                # A server that said 354 with no recipient: send an empty message and
                # take its reply as the end of this transaction.
                def empty() -> None:
                    self._in_body = False
                    self.transport.write(b".\r\n")
                    self._expect("final", lambda r: self._finish_job(self._outcomes, rset=True))

                self._after_this_read(empty)
            return
        kind = failure_kind(reply.code)
        if kind is None:
            self._fatal(f"unexpected reply to DATA from {self.policy.mx_name}: {reply.text}")
        elif self._accepted:
            self._data_failed(kind, reply)
        else:
            self._finish_job(self._outcomes, rset=True)

    def _data_failed(self, kind: str, reply: Reply) -> None:
        for address in self._accepted:
            self._outcomes[address] = Outcome(kind, reply.text)
        self._finish_job(self._outcomes, rset=True)

    def _on_bdat_reply(self, reply: Reply) -> None:
        """The reply to the pipelined ``BDAT LAST``: the message's final reply."""
        if self._accepted:
            self._on_final_reply(reply)
        elif failure_kind(reply.code) or 200 <= reply.code < 300:
            # No recipient: the server consumed the chunk and refused it (RFC 3030 §2).
            self._finish_job(self._outcomes, rset=True)
        else:
            self._fatal(f"unexpected reply to BDAT from {self.policy.mx_name}: {reply.text}")

    def _start_body(self) -> None:
        assert self.job is not None
        env = self.job.envelope
        try:
            # MessageFile: a message deleted meanwhile has its file recycled, and
            # another message's bytes must never follow ours.
            reader = message_reader(self.job.path, env.offset, env.size)
        except OSError as e:
            # The spool file is gone (deleted by `mailhost queue delete`): abandon.
            self._fatal(f"spool file unreadable: {e}")
            return
        self._body = BodySender(reader, DataEncoder(), self.transport.write, self.resetTimeout,
                                self._body_written, self._fatal)
        self._arm()
        self.transport.registerProducer(self._body, True)
        self._body.pump()

    def _body_written(self, tail: bytes) -> None:
        """The last chunk is written and ``tail`` (the terminator) is due: the final
        reply follows."""
        self._body = None
        self.transport.unregisterProducer()
        self._in_body = False
        self.transport.write(tail)
        self._expect("final", self._on_final_reply)

    def _stop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.stop()
            if self.transport is not None:
                self.transport.unregisterProducer()

    def _on_final_reply(self, reply: Reply) -> None:
        if 200 <= reply.code < 300:
            kind = DELIVERED
        else:
            failed = failure_kind(reply.code)
            if failed is None:
                self._fatal(
                    f"unexpected reply after the message from {self.policy.mx_name}: "
                    f"{reply.text}"
                )
                return
            kind = failed
        dsn = "DSN" in self.extensions
        for address in self._accepted:
            self._outcomes[address] = Outcome(kind, reply.text, dsn_passed=dsn and kind == DELIVERED)
        self._finish_job(self._outcomes, rset=kind != DELIVERED)

    def _finish_job(self, outcomes: dict[str, Outcome], rset: bool) -> None:
        job, self.job = self.job, None
        assert job is not None
        self.source.job_done(job, outcomes, self._info())
        if self._closed:
            return
        if rset:
            self._send(b"RSET", "RSET", self._on_rset)
        else:
            self._after_this_read(self._next_message)

    def _on_rset(self, reply: Reply) -> None:
        if 200 <= reply.code < 300:
            self._after_this_read(self._next_message)
        else:
            self._give_up(f"RSET refused by {self.policy.mx_name}: {reply.text}")


class _RelayFactory(protocol.Factory):
    def __init__(self, policy: ClientPolicy, source: JobSource, done: defer.Deferred,
                 reactor: Any) -> None:
        self.policy = policy
        self.source = source
        self.done = done
        self.reactor = reactor

    def buildProtocol(self, addr: object) -> RelayClient:  # noqa: N802
        p = RelayClient(self.policy, self.source, self.done, reactor=self.reactor)
        p.factory = self
        return p


async def run_session(
    endpoint: IStreamClientEndpoint,
    policy: ClientPolicy,
    source: JobSource,
    track: set[RelayClient] | None = None,
    *,
    reactor: Any = None,
) -> SessionResult:
    """Connect, relay jobs until ``source`` runs dry, and report how it went.
    ``track`` holds the live protocol, so a stopping service can abort it; the
    client's timers run on ``reactor`` (the global one by default)."""
    done: defer.Deferred = defer.Deferred()
    try:
        proto = await endpoint.connect(_RelayFactory(policy, source, done, reactor))
    except Exception as e:  # ConnectError, TimeoutError, DNS lookup errors
        where = policy.mx_name
        if policy.address:
            where += f" [{policy.address}]" + (f":{policy.port}" if policy.port else "")
        return SessionResult(error=f"cannot connect to {where}: {describe_error(e)}")
    if track is not None:
        track.add(cast(RelayClient, proto))  # what _RelayFactory builds
    try:
        return await done
    finally:
        if track is not None:
            track.discard(proto)
