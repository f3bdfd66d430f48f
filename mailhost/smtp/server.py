"""The ESMTP server protocol: command handling for inbound (25) and submission (587/465).

Written on ``twisted.internet.protocol.Protocol`` (with its own deadline timer) rather than by
subclassing ``twisted.mail.smtp.ESMTP``: that class reads DATA line by line, falls into
command mode on an overlong DATA line, runs commands pipelined after STARTTLS, gives
one reply for all recipients and can reorder pipelined replies (see
TWISTED-MAIL-NOTES.md). Fixing those means overriding its line handling, DATA state,
RCPT/DATA replies and STARTTLS, i.e. nearly all of it. ``LineReceiver`` was not used
either: it throws away the buffer after an overlong line and re-splits its whole
buffer for every line, while we need to discard up to the next CRLF and stay in sync.

How it stays correct under pipelining: commands are taken from the input buffer one
at a time; a command whose answer is asynchronous (AUTH, MAIL and RCPT while the
envelope checks of ``mailhost.message.checks`` decide, end of DATA) makes the
protocol *busy*, and nothing after it is read until its reply has been written, so
replies always leave in command order. While DATA streams, input goes in whole TCP
chunks to ``DataReader``, through the bare CR/LF policy (``smtp.bare_newline``,
``mailhost.message.newlines``) and on into the delivery targets (``delivery``).

How slow clients are kept from holding a connection slot for ever (with the
eviction of idle sessions in ``mailhost.limits``): ``smtp.command_timeout`` is a
deadline for a whole command line, restarted only when a line is complete or a reply
to an asynchronous command went out, so trickled bytes buy nothing;
``smtp.pre_mail_timeout`` bounds the time from connect to the first MAIL FROM; and
DATA/BDAT run on a time budget that the upload refills at ``smtp.min_data_rate``
(Postfix's ``smtpd_min_data_rate`` with per-request deadlines).

How a directory harvest is slowed and cut (Postfix's ``smtpd_soft_error_limit``,
``smtpd_error_sleep_time`` and ``smtpd_hard_error_limit``): every 4xx/5xx reply
counts as an error until a message is delivered; from the soft limit on each error
reply is held back a growing while, and past the hard limit the session ends with
``421 4.7.0``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, interfaces, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhost.auth.login import LoginFailed
from mailhost.auth.sasl import SASLError, decode_plain
from mailhost.diskspace import FULL, READ_ONLY, describe, storage_problem
from mailhost.limits import IEvictable
from mailhost.message.checks import ClientContext
from mailhost.message.headers import received_header
from mailhost.message.hops import HopCounter
from mailhost.message.newlines import BareNewlines
from mailhost.message.stage import MessageContext
from mailhost.outbound.interfaces import QueueRecipient
from mailhost.sessions import CUT, GREETING, HeldVerdict, ISession, Refuse
from mailhost.settings import SMTPSettings
from mailhost.smtp import burl
from mailhost.smtp.data import ChunkReader, DataReader
from mailhost.smtp.delivery import Delivery, targets_for
from mailhost.smtp.params import NULL_ADDRESS, parse_mail_arg, parse_rcpt_arg, split_path
from mailhost.smtp.policy import Decision
from mailhost.smtp.quota import data_refusal, rcpt_refusal
from mailhost.smtp.reply import Reply
from mailhost.smtp.session import Session, Transaction, new_transaction_id
from mailhost.store.interfaces import StoreUnavailable
from mailhost.tcp import DirectWriter, QuickAck, send_at_once
from mailhost.tls import cancel_deadline, start_tls

log = Logger()

#: RFC 5321 allows 512; extensions (SMTPUTF8, DSN parameters, AUTH) need slack.
MAX_COMMAND_LINE = 2048
#: Stop reading from a client that pipelines this much while we are busy.
MAX_PIPELINE_BUFFER = 64 * 1024
#: Reply codes that count against the junk-command limit.
_JUNK_CODES = frozenset({500, 501, 502, 503, 504, 555})
#: Longest stretch of one error reply's delay (seconds).
MAX_ERROR_SLEEP = 10.0
#: A session timer firing this close to its deadline (float rounding) times out.
_DEADLINE_SLACK = 0.001

_OK = Reply(250, "2.0.0", "Ok")
# Sent for every message: made (and encoded, Reply.to_bytes) once (issue 18).
_MAIL_OK = Reply(250, "2.1.0", "Ok")
_GO_AHEAD = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
_BYE = Reply(221, "2.0.0", "Bye")


class _LineTooLong(Exception):
    """An overlong line arrived where an AUTH exchange waited for its response."""


@implementer(IEvictable, ISession)
class SMTPServer(Protocol):
    """One ESMTP session. Built by ``SMTPFactory``.

    Implements: IEvictable (idle until its first MAIL, not authenticated) and ISession
    (it reports its commands to the host's ``SessionRegistry`` and asks its dispatch
    hook before running each; a message's end is the pseudo-command ``DATA-END``).
    """

    # The connected TCP or TLS transport (also ITCPTransport, ITLSTransport, IConsumer,
    # IPushProducer); Twisted declares only ITransport | None.
    transport: Any
    # The STARTTLS handshake deadline, cancelled when the connection closes.
    _tls_deadline: Any = None

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.registry = factory.registry
        self.protocol = "submission" if factory.submission else "smtp"
        self._verb: str | None = None  # the command whose final reply is awaited
        # What pipeline stages keep for this session (a milter's connection).
        self._stage_session: dict[str, Any] = {}
        self._octets = 0  # message octets its reply accepts (DATA-END, BDAT-LAST)
        self._cut = False  # the dispatch hook said CUT for the command under way
        self._held = HeldVerdict("SMTP", lambda: self._closing)
        # The settings this session started with (a reload applies to later sessions).
        self.settings: SMTPSettings = factory.settings
        self.session: Session | None = None
        # The envelope checks' view of this client (DNSBL, greylisting, rate limits).
        self._client: ClientContext | None = None
        self._buffer = bytearray()
        self._busy = False
        self._processing = False
        self._closing = False
        self._discarding_line = False
        self._paused = False
        self._registered = False
        self._junk = 0
        # _command takes bytes; an AUTH exchange's handler also takes _LineTooLong.
        self._line_handler: Callable[[Any], defer.Deferred | None] = self._command
        self._reader: DataReader | ChunkReader | None = None
        self._delivery: Delivery | None = None
        self._committing = False  # final dot / BDAT LAST seen, commit under way
        # BDAT: (last?, error to answer once the chunk is consumed), for the chunk in flight
        self._chunk: tuple[bool, Reply | None] | None = None
        self._hops: HopCounter | None = None
        self._newlines: BareNewlines | None = None  # smtp.bare_newline, per message
        self._bdat_total = 0  # octets of the BDAT message so far
        self._errors = 0  # error replies since the last delivered message
        self._sleeping = False  # an error reply is being held back (_answer)
        self._mailed = False  # a MAIL FROM was accepted once: no pre-MAIL deadline
        self._pre_mail_call: Any = None
        self._progress = 0.0  # reactor time of the last complete command line
        self._data_budget = 0.0  # seconds left for DATA/BDAT (see _charge_data)
        self._data_stamp = 0.0
        self._quick_ack: QuickAck | None = None
        # Every reply goes out through it (mailhost.tcp.DirectWriter); made at connect.
        self._writer: DirectWriter | None = None
        self._writes = 0  # replies written so far (dataReceived: did one carry the ACK?)
        self._our_ip: str | None = None  # _local_ip(transport), asked once (getsockname)
        # The session's deadline (see setTimeout): the period a line restarts, the
        # reactor time it falls due, and the one DelayedCall that watches it.
        self._timeout: float | None = None
        self._deadline: float | None = None
        self._timer: Any = None

    def _our_address(self) -> str:
        """Our address on this connection, asked of the socket once (at connect, for
        the checks) and reused at MAIL (a getsockname per message saved: issue 18)."""
        if self._our_ip is None:
            self._our_ip = _local_ip(self.transport)
        return self._our_ip

    # -- timers -------------------------------------------------------------------

    # TimeoutMixin's interface (setTimeout, resetTimeout, timeoutConnection) over one
    # DelayedCall per session, armed at connect and moved only when a deadline comes
    # sooner: restarting the deadline, as every command line and DATA chunk does, is
    # a float stored, and the call, when it fires before the deadline, re-arms itself
    # for the rest. TimeoutMixin reset or replaced its DelayedCall for every line and
    # chunk and around every commit: a dozen timer operations a message (issue 18).

    def setTimeout(self, period: float | None) -> None:  # noqa: N802
        """Time out ``period`` seconds from now (restarted by ``resetTimeout``), or
        never (None)."""
        self._timeout = period
        if period is None:
            self._deadline = None
        else:
            self._set_deadline(period)

    def resetTimeout(self) -> None:  # noqa: N802
        """Restart the current period from now."""
        if self._timeout is not None:
            self._set_deadline(self._timeout)

    def _set_deadline(self, period: float) -> None:
        reactor = self.factory.reactor
        deadline = self._deadline = reactor.seconds() + period
        timer = self._timer
        if timer is None:
            self._timer = reactor.callLater(period, self._timer_fired)
        elif timer.getTime() > deadline:
            timer.reset(period)

    def _timer_fired(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._closing:
            return
        reactor = self.factory.reactor
        left = deadline - reactor.seconds()
        if left > _DEADLINE_SLACK:  # restarted since it was armed: watch the rest
            self._timer = reactor.callLater(left, self._timer_fired)
            return
        self._timeout = self._deadline = None
        self.timeoutConnection()

    def _stop_timer(self) -> None:
        self._timeout = self._deadline = None
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def timeoutConnection(self) -> None:  # noqa: N802
        what = "data" if self._reader is not None else "command"
        self._timed_out(what)

    def _timed_out(self, what: str) -> None:
        self._send(Reply(421, "4.4.2", f"{self.settings.hostname} Error: timeout exceeded "
                                       f"waiting for {what}"))
        self._abandon("timeout")
        self._close()

    def _pre_mail_deadline(self) -> None:
        """``smtp.pre_mail_timeout`` passed without a MAIL FROM. An AUTH still being
        checked is our delay, not the client's: look again once it is answered."""
        self._pre_mail_call = None
        if self._closing or self._mailed:
            return
        if self._busy:
            self._pre_mail_call = self.factory.reactor.callLater(1.0, self._pre_mail_deadline)
            return
        self._timed_out("MAIL")

    def _cancel_pre_mail(self) -> None:
        if self._pre_mail_call is not None and self._pre_mail_call.active():
            self._pre_mail_call.cancel()
        self._pre_mail_call = None

    @property
    def _session(self) -> Session:
        """The session, made in connectionMade: commands and data only come after it."""
        assert self.session is not None
        return self.session

    # -- eviction under pressure (mailhost.limits) ---------------------------------

    def idle_since(self) -> float | None:
        """See IEvictable: idle before the first MAIL FROM, not authenticated, no
        command running."""
        if (self._closing or self._mailed or (self._busy and not self._sleeping)
                or self._reader is not None or self.session is None
                or self.session.user is not None):
            return None  # (a held-back error reply does not protect a session)
        return self._progress

    def evict(self, line: bytes) -> None:
        """See IEvictable."""
        if self._closing:
            return
        self._write(line)
        self._abandon("evicted")
        self._close()

    # -- connection ---------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        self._writer = DirectWriter(self.transport)
        peer = self.transport.getPeer()
        self.session = Session(client_ip=getattr(peer, "host", "unknown"),
                               client_port=getattr(peer, "port", 0),
                               tls=interfaces.ISSLTransport.providedBy(self.transport))
        self.registry.opened(self)
        refusal = self.factory.admit(self)
        if refusal is not None:
            self._send(refusal)
            self._close()
            return
        self._registered = True
        if self.factory.checks:  # their lookups (rDNS, DNSBL) start now, unwaited
            # Our address is for the milters' macros only; they are pipeline stages
            # (EnvelopeChecks.joined). Without one, a getsockname per connection saved.
            self._client = self.factory.checks.connect(ClientContext(
                self.session.client_ip, submission=self.factory.submission,
                port=self.session.client_port,
                local_ip=self._our_address() if self.factory.pipeline else "",
                session=self._stage_session))
        send_at_once(self.transport, self._writer.socket)
        self._quick_ack = QuickAck(self.transport, self._writer.socket)
        self._progress = self.factory.reactor.seconds()
        self.setTimeout(self.settings.command_timeout)
        if self.settings.pre_mail_timeout > 0:
            self._pre_mail_call = self.factory.reactor.callLater(
                self.settings.pre_mail_timeout, self._pre_mail_deadline)
        verdict = self.registry.before_command(self, GREETING, "")
        if isinstance(verdict, defer.Deferred):
            self._busy = True  # nothing is read before the greeting
            self._held.wait(verdict, self._greet)
        else:
            self._greet(verdict)

    def _greet(self, verdict: Any) -> None:
        if self._closing:
            return
        if isinstance(verdict, Refuse):
            self._send(Reply(verdict.code or 451, "", verdict.text))
            self._close()
        elif verdict is CUT:
            self._cut_now()
        else:
            self._send(self.factory.greeting(self.settings.hostname))
        if self._busy and not self._closing:
            self._unbusy(None)

    def connectionLost(self, reason=None) -> None:  # noqa: N802
        self._closing = True
        if self._writer is not None:
            self._writer.stop()
        self._stop_timer()
        cancel_deadline(self._tls_deadline)
        self._cancel_pre_mail()
        self._held.cancel()
        if self._registered:
            self._registered = False
            self.factory.release(self)
        self._abandon("disconnected")
        if self.factory.pipeline:
            self.factory.pipeline.close_session(self._stage_session)
        self.registry.closed(self)

    # -- ISession -----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """See ISession: a transaction or a command is under way."""
        return (self._busy or self._reader is not None or self._committing
                or (self.session is not None and self.session.transaction is not None))

    def goodbye(self, reason: str) -> None:
        """See ISession: ``421 4.3.2`` and close."""
        if self._closing:
            return
        self._write(Reply(421, "4.3.2", f"{self.settings.hostname} "
                                                 f"{reason}").to_bytes())
        self._abandon("shutdown")
        self._close()

    def _cut_now(self) -> None:
        """The dispatch hook's CUT: the client hears nothing more."""
        self._cut = False
        self._closing = True
        self.setTimeout(None)
        self._cancel_pre_mail()
        self.transport.abortConnection()

    def _close(self) -> None:
        self._closing = True
        self.setTimeout(None)
        self._cancel_pre_mail()
        self.transport.loseConnection()

    def _abandon(self, why: str) -> None:
        """Drop a transaction that will never complete; nothing gets stored.

        A transaction whose final dot was seen is left alone: its commit finishes and
        logs itself (the client may just not hear the 250).
        """
        if self._committing or self.session is None:
            return
        size = self._reader.size if self._reader is not None else None
        self._reader = None
        self._chunk = None
        self._hops = self._newlines = None
        if self._delivery is not None:
            self._delivery.abort()
            self._delivery = None
        self._reset_transaction(why, size)

    # -- input --------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._closing:
            return
        # Only DATA/BDAT bytes move a deadline (by the minimum rate); in command mode
        # the deadline is for the whole line, restarted when a line is complete.
        if self._reader is not None:
            self._charge_data(len(data))
        writes = self._writes
        if self._reader is not None and not self._buffer:
            self._feed_data(data)
        else:
            self._buffer += data
        self._process()
        if ((self._reader is not None or self._buffer) and self._quick_ack is not None
                and self._writes == writes):
            # Read, but no reply yet (a message body, half a line): a client with Nagle
            # on holds its next write (the final dot) until we acknowledge. A reply
            # written meanwhile (DATA's 354) carried the ACK already (issue 18: a
            # setsockopt per message saved).
            self._quick_ack.now()

    def _start_data_budget(self) -> None:
        """DATA or BDAT begins: a full budget of ``smtp.data_timeout`` seconds."""
        self._data_budget = self.settings.data_timeout
        self._data_stamp = self.factory.reactor.seconds()
        self.setTimeout(self.settings.data_timeout)

    def _charge_data(self, n: int) -> None:
        """Spend the time since the last read, earn ``n / min_data_rate`` seconds,
        never more than ``data_timeout`` in hand: a client that uploads at the minimum
        rate never runs out, one that trickles does, however often it sends a byte."""
        now = self.factory.reactor.seconds()
        rate = self.settings.min_data_rate
        if rate <= 0:
            budget = self.settings.data_timeout
        else:
            budget = min(self.settings.data_timeout,
                         self._data_budget - (now - self._data_stamp) + n / rate)
        self._data_budget, self._data_stamp = budget, now
        self.setTimeout(max(budget, 0.0))

    def _feed_data(self, data: bytes) -> None:
        assert self._reader is not None  # called only while a message is read
        rest = self._reader.feed(data)
        if rest is not None:
            self._buffer[:0] = rest
            if self._chunk is not None and not self._chunk_done():
                return
            self._busy = True
            self._end_of_data().addBoth(self._unbusy)

    def _process(self) -> None:
        """Run buffered commands until busy, closing, or out of complete lines."""
        if self._processing:
            return
        self._processing = True
        try:
            while self._buffer and not self._closing and (
                    not self._busy or self._line_handler != self._command):
                # (an AUTH exchange is busy but still reads its continuation lines)
                if self._reader is not None:
                    data = bytes(self._buffer)
                    self._buffer.clear()
                    self._feed_data(data)
                    continue
                nl = self._buffer.find(b"\n")
                if nl < 0:
                    if len(self._buffer) > MAX_COMMAND_LINE:
                        self._discarding_line = True
                        self._buffer.clear()
                    break
                line = bytes(self._buffer[:nl])
                del self._buffer[: nl + 1]
                if line.endswith(b"\r"):
                    line = line[:-1]
                self._progress = self.factory.reactor.seconds()
                self.resetTimeout()
                if self._discarding_line or len(line) > MAX_COMMAND_LINE:
                    self._discarding_line = False
                    if self._line_handler != self._command:
                        # Inside an AUTH exchange: the overlong line ends it, and its
                        # reply is the AUTH's (the next line is a command again).
                        self._line_handler(_LineTooLong())
                    else:
                        self._send(Reply(500, "5.5.2", "Error: line too long"))
                    continue
                result = self._line_handler(line)
                # (most handlers answer at once and return None: skip the ABC check)
                if result is not None and isinstance(result, defer.Deferred):
                    self._busy = True
                    result.addBoth(self._unbusy)
            if self._busy and len(self._buffer) > MAX_PIPELINE_BUFFER and not self._paused:
                self._paused = True
                self.transport.pauseProducing()
        finally:
            self._processing = False

    def _unbusy(self, result: Any) -> None:
        if isinstance(result, Failure):
            log.failure("unexpected error in SMTP session", result)
        self._busy = False
        if not self._closing and self._reader is None:
            self.resetTimeout()  # the deadline for the next line starts now
        if self._paused and not self._closing:
            self._paused = False
            self.transport.resumeProducing()
        if not self._closing:
            self._process()

    def _send(self, reply: Reply) -> None:
        if self._verb is not None:
            verb, self._verb = self._verb, None
            self.registry.finished(self, verb, str(reply.code), self._octets)
            self._octets = 0
            if self._cut and reply.code != 354:
                self._cut_now()
                return
        if reply.code in _JUNK_CODES:
            self._junk += 1
            if self._junk > self.settings.max_junk_commands:
                self._too_many_errors()
                return
        if reply.code >= 400 and reply.code != 421:
            self._errors += 1
            if self._errors > self.settings.hard_error_limit:
                self._too_many_errors()
                return
        self._write(reply.to_bytes())

    def _write(self, data: bytes) -> None:
        self._writes += 1
        if self._writer is None:  # not connected yet (nothing writes before connect)
            self.transport.write(data)
        else:
            self._writer.write(data)

    def _too_many_errors(self) -> None:
        reply = Reply(421, "4.7.0", f"{self.settings.hostname} Error: too many errors")
        self._write(reply.to_bytes())
        self._abandon("too many errors")
        self._close()

    def _error_delay(self, reply: Reply) -> float:
        """Seconds to hold back ``reply``: 0 unless it is an error at or past the soft
        limit; then ``error_sleep_time`` times the errors over it, bounded."""
        if reply.code < 400 or reply.code == 421:
            return 0.0
        over = self._errors + 1 - self.settings.soft_error_limit
        if over <= 0 or self.settings.error_sleep_time <= 0:
            return 0.0
        return min(MAX_ERROR_SLEEP, over * self.settings.error_sleep_time)

    def _answer(self, reply: Reply) -> defer.Deferred | None:
        """Send a command's reply; an error past the soft limit goes out late, and the
        session reads nothing more meanwhile (the Deferred makes it busy)."""
        delay = self._error_delay(reply)
        if not delay:
            self._send(reply)
            return None

        def send() -> None:
            self._sleeping = False
            if not self._closing:
                self._send(reply)

        self._sleeping = True
        return task.deferLater(self.factory.reactor, delay, send)

    # -- command dispatch ---------------------------------------------------------

    def _command(self, line: bytes) -> defer.Deferred | None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._answer(Reply(500, "5.5.2", "Error: bad UTF-8 syntax"))
        verb, _, arg = text.partition(" ")
        handler = getattr(self, "smtp_" + verb.upper(), None) if verb.isalpha() else None
        if handler is None:
            return self._answer(Reply(500, "5.5.1", "Error: command not recognized"))
        verb = verb.upper()
        arg = arg.strip(" ")
        verdict = self.registry.before_command(self, verb, text)
        if self._closing:
            return None  # told goodbye (drain)
        if isinstance(verdict, defer.Deferred):
            self._busy = True  # held: nothing more is read meanwhile
            self._held.wait(verdict, self._resume, verb, handler, arg)
            return None
        return self._run(verdict, verb, handler, arg)

    def _resume(self, verdict: Any, verb: str, handler: Any, arg: str) -> None:
        """A held command's verdict came: run it as ``_process`` would have."""
        self._busy = False
        result = self._run(verdict, verb, handler, arg)
        if isinstance(result, defer.Deferred):
            self._busy = True
            result.addBoth(self._unbusy)
        elif not self._busy and not self._closing:
            self._unbusy(None)

    def _run(self, verdict: Any, verb: str, handler: Any, arg: str) -> defer.Deferred | None:
        """Run one command (or refuse it, as the dispatch hook said) and report it."""
        event = verb
        if verb == "BDAT" and arg.upper().endswith(" LAST"):
            event = "BDAT-LAST"
        self._verb = event
        self._cut = verdict is CUT
        self.registry.started(self, event)
        if isinstance(verdict, Refuse):
            self._refuse(verdict, verb, arg)
            return None
        try:
            result = handler(arg)
        except Reply as reply:
            return self._answer(reply)
        if isinstance(result, Reply):
            return self._answer(result)
        return result

    def _refuse(self, verdict: Refuse, verb: str, arg: str) -> None:
        """The dispatch hook refused the command. A refused BDAT's chunk is still
        read (the client sends it regardless) and, as at a server whose chunk failed,
        the transaction ends, so no later chunk commits a message with a hole in it."""
        reply = Reply(verdict.code or 451, "", verdict.text)
        bdat = _bdat_args(arg) if verb == "BDAT" else None
        if bdat is None:
            self._send(reply)
            return
        length, last = bdat
        self._abandon("refused")
        self._chunk = (last, reply)
        self._reader = ChunkReader(None, length, self.settings.max_message_size, 0)
        self._start_data_budget()
        if length == 0:
            self._feed_data(b"")

    def smtp_HELO(self, arg: str) -> Reply:  # noqa: N802
        if not arg:
            return Reply(501, "5.5.4", "Syntax: HELO hostname")
        self._session.helo = arg
        self._session.esmtp = False
        self._reset_transaction()
        return self.factory.reply(250, (self.settings.hostname,))

    def smtp_EHLO(self, arg: str) -> Reply:  # noqa: N802
        if not arg:
            return Reply(501, "5.5.4", "Syntax: EHLO hostname")
        self._session.helo = arg
        self._session.esmtp = True
        self._reset_transaction()
        lines = [self.settings.hostname, "PIPELINING", f"SIZE {self.settings.max_message_size}",
                 "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8", "DSN", "CHUNKING"]
        if self.factory.tls_options is not None and not self._session.tls:
            lines.append("STARTTLS")
        if self._auth_allowed():
            lines.append("AUTH PLAIN LOGIN")
        burl_keyword = burl.ehlo_keyword(self.factory.url_fetcher, self.factory.submission)
        if burl_keyword is not None:
            lines.append(burl_keyword)
        return self.factory.reply(250, tuple(lines))

    def smtp_NOOP(self, arg: str) -> Reply:  # noqa: N802
        return _OK

    def smtp_RSET(self, arg: str) -> Reply:  # noqa: N802
        if arg:
            return Reply(501, "5.5.4", "Syntax: RSET")
        self._reset_transaction()
        return _OK

    def smtp_VRFY(self, arg: str) -> Reply:  # noqa: N802
        if not arg:
            return Reply(501, "5.5.4", "Syntax: VRFY address")
        return Reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery")

    def smtp_EXPN(self, arg: str) -> Reply:  # noqa: N802
        return Reply(502, "5.5.1", "Error: command not implemented")

    def smtp_HELP(self, arg: str) -> Reply:  # noqa: N802
        return Reply(214, "2.0.0", ["Commands: HELO EHLO MAIL RCPT DATA RSET NOOP VRFY",
                                    "HELP QUIT STARTTLS AUTH",
                                    "See RFC 5321"])

    def smtp_QUIT(self, arg: str) -> None:  # noqa: N802
        self._send(_BYE)
        self._reset_transaction("quit")
        self._close()

    # -- STARTTLS -----------------------------------------------------------------

    def smtp_STARTTLS(self, arg: str) -> Reply | None:  # noqa: N802
        if self._session.tls:
            return Reply(503, "5.5.1", "Error: TLS already active")
        if self.factory.tls_options is None:
            return Reply(502, "5.5.1", "Error: command not implemented")
        if arg:
            return Reply(501, "5.5.4", "Syntax: STARTTLS")
        self._send(Reply(220, "2.0.0", "Ready to start TLS"))
        if self._closing:
            return None  # cut by the dispatch hook
        # CVE-2011-0411: anything the client sent after STARTTLS, before the
        # handshake, is plaintext an attacker could have injected. Drop it.
        self._buffer.clear()
        self._discarding_line = False
        assert self._writer is not None  # made at connect
        self._writer.stop()  # TLS wraps the transport: writes go through it from now on
        self._tls_deadline = start_tls(self.transport, self.factory.tls_options,
                                       self.settings.handshake_timeout, self.factory.reactor)
        self._reset_transaction("starttls")
        self._session.reset_after_tls()
        self._session.tls = True
        return None

    # -- AUTH ---------------------------------------------------------------------

    def _auth_allowed(self) -> bool:
        return self._session.tls or self.factory.login.plaintext_allowed(self.transport)

    def smtp_AUTH(self, arg: str) -> Reply | defer.Deferred:  # noqa: N802
        if not self._session.esmtp:
            return Reply(503, "5.5.1", "Error: send EHLO first")
        if self._session.user is not None:
            return Reply(503, "5.5.1", "Error: already authenticated")
        if self._session.transaction is not None:
            return Reply(503, "5.5.1", "Error: MAIL transaction in progress")
        if not self._auth_allowed():
            return Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        initial = initial.strip(" ")
        if mech not in ("PLAIN", "LOGIN"):
            return Reply(504, "5.5.4", "Unrecognized authentication type")
        return self._sasl(mech, initial or None)

    def _challenge(self, text: bytes) -> defer.Deferred:
        """Send a 334 challenge; fire with the client's next line (never logged)."""
        d: defer.Deferred[bytes] = defer.Deferred()
        self._write(b"334 " + base64.b64encode(text) + b"\r\n")

        def on_line(line: bytes | _LineTooLong) -> None:
            self._line_handler = self._command
            if isinstance(line, _LineTooLong):
                d.errback(Reply(500, "5.5.2", "Error: line too long; authentication aborted"))
            else:
                d.callback(line)

        self._line_handler = on_line
        if not self._processing and self._buffer:
            self.factory.reactor.callLater(0, self._process)
        return d

    @staticmethod
    def _decode(response: bytes | str) -> bytes:
        if isinstance(response, str):
            response = response.encode("ascii", "replace")
        response = response.strip()
        if response == b"*":
            raise Reply(501, "5.7.0", "Authentication aborted")
        if response == b"=":
            return b""
        try:
            return base64.b64decode(response, validate=True)
        except (binascii.Error, ValueError):
            raise Reply(501, "5.5.2", "Cannot decode response") from None

    @defer.inlineCallbacks
    def _sasl(self, mech: str, initial: str | None):
        try:
            if mech == "PLAIN":
                response = initial if initial is not None else (yield self._challenge(b""))
                try:
                    username, password = decode_plain(response)
                except SASLError as e:
                    raise {
                        "cancelled": Reply(501, "5.7.0", "Authentication aborted"),
                        "encoding": Reply(501, "5.5.2", "Cannot decode response"),
                        "authzid": Reply(535, "5.7.8", "Authentication credentials invalid"),
                    }.get(e.kind, Reply(501, "5.5.2", "Invalid authentication exchange")) from None
            else:
                if initial is not None:
                    user_raw = self._decode(initial)
                else:
                    user_raw = self._decode((yield self._challenge(b"Username:")))
                pass_raw = self._decode((yield self._challenge(b"Password:")))
                username = user_raw.decode("utf-8", "replace")
                password = pass_raw.decode("utf-8", "replace")
            try:
                avatar = yield self.factory.login.login(username, password,
                                                        self._session.client_ip, "smtp")
            except LoginFailed as e:
                if e.temporary:
                    raise Reply(454, "4.7.0", "Temporary authentication failure") from None
                raise Reply(535, "5.7.8", "Authentication credentials invalid") from None
            except Exception:
                log.failure("SMTP AUTH backend error")
                raise Reply(454, "4.7.0", "Temporary authentication failure") from None
            # SMTP keeps only the user name, so the login ends at once.
            avatar.logout()
            if self._closing:
                return
            self._session.user = avatar.user
            self._session.auth_mechanism = mech
            self._send(Reply(235, "2.7.0", "Authentication successful"))
        except Reply as reply:
            if not self._closing:
                self._send(reply)

    # -- the mail transaction -----------------------------------------------------

    def _reset_transaction(self, why: str = "reset", size: int | None = None) -> None:
        """RSET, EHLO, QUIT, STARTTLS or a dropped client: forget the transaction.

        A BDAT transaction may hold open writers between chunks; they are aborted.
        """
        if self._delivery is not None and not self._committing:
            self._delivery.abort()
            self._delivery = None
            self._hops = self._newlines = None
        if self._session.transaction is not None:
            self._log_transaction(self._session.transaction, size, why)
        self._session.reset_transaction()

    def smtp_MAIL(self, arg: str) -> Reply | defer.Deferred:  # noqa: N802
        session = self._session
        if session.helo is None:
            return Reply(503, "5.5.1", "Error: send HELO/EHLO first")
        if session.transaction is not None:
            return Reply(503, "5.5.1", "Error: nested MAIL command")
        if self.factory.submission and session.user is None:
            return Reply(530, "5.7.0", "Authentication required")
        if arg[:5].upper() != "FROM:":
            return Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
        try:
            sender, params = parse_mail_arg(arg[5:])
        except Reply as reply:
            if reply.code == 553 and reply.status == "5.1.3":
                return Reply(501, "5.1.7", "Bad sender address syntax")
            raise
        if not session.esmtp and params != type(params)():
            return Reply(555, "5.5.4", "Error: ESMTP parameters need EHLO")
        if params.size is not None and params.size > self.settings.max_message_size:
            return Reply(552, "5.3.4", "Message size exceeds fixed limit")
        if (self.factory.submission and self.settings.enforce_sender
                and (sender.is_null or sender.canonical()
                     not in {a.lower() for a in self.factory.directory.addresses_for(session.user)})):
            return Reply(553, "5.7.1", f"<{sender}>: Sender address rejected: not owned by user")
        refused = self._storage_refusal(params.size)
        if refused is not None:
            return refused
        # As sent, for milters (pipeline stages): nobody else reads them.
        esmtp = tuple(split_path(arg[5:])[1].split()) if self.factory.pipeline else ()
        if self._client is not None:
            self._client.helo, self._client.user = session.helo or "", session.user
            self._client.auth_mechanism, self._client.mail_params = session.auth_mechanism, esmtp
            self._client.transaction_id = ""
            return self._checked(self.factory.checks.mail(self._client, str(sender)),
                                 lambda: self._begin_transaction(sender, params, esmtp))
        return self._begin_transaction(sender, params, esmtp)

    def _begin_transaction(self, sender: Any, params: Any,
                           mail_params: tuple[str, ...] = ()) -> Reply:
        """MAIL FROM passed every check: the transaction starts."""
        session = self._session
        session.transaction = Transaction(id=new_transaction_id(), sender=sender, params=params)
        if self.factory.pipeline:  # the message pipeline's envelope stages (SPF) start now
            session.transaction.context = self.factory.pipeline.start(MessageContext(
                session.client_ip, session.helo or "", str(sender), session.user,
                self.factory.submission,
                trusted=self.factory.policy.may_relay(session.client_ip, session.user),
                results=dict(self._client.message_results) if self._client is not None else {},
                queue_id=session.transaction.id, client_port=session.client_port,
                client_name=(self._client.name or "") if self._client is not None else "",
                auth_mechanism=session.auth_mechanism if session.user else "",
                session=self._stage_session,
                local_ip=self._our_address(), mail_params=mail_params))
        self._mailed = True
        self._cancel_pre_mail()
        return _MAIL_OK

    def smtp_RCPT(self, arg: str) -> Reply | defer.Deferred:  # noqa: N802
        txn = self._session.transaction
        if txn is None:
            return Reply(503, "5.5.1", "Error: need MAIL command")
        if arg[:3].upper() != "TO:":
            return Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
        if len(txn.accepted) >= self.settings.max_recipients:
            reply = Reply(452, "4.5.3", "Error: Too many recipients")
            txn.record(arg[3:].strip(), reply.code)
            return reply
        refused = self._storage_refusal(txn.params.size)
        if refused is not None:
            txn.record(arg[3:].strip(), refused.code)
            return refused
        try:
            rcpt, params = parse_rcpt_arg(arg[3:], utf8=txn.params.smtputf8)
        except Reply as reply:
            if reply.code == 553 and reply.status == "5.1.3":
                reply = Reply(501, "5.1.3", "Bad recipient address syntax")
            txn.record(arg[3:].strip(), reply.code)
            raise reply from None
        try:
            decision: Decision = self.factory.policy.decide(
                rcpt, params, self._session.client_ip, self._session.user)
        except Reply as reply:
            txn.record(str(rcpt), reply.code)
            raise
        decided = None
        if self._client is not None:
            self._client.transaction_id = txn.id
            decided = self.factory.checks.rcpt(self._client, str(txn.sender), str(rcpt),
                                               len(txn.accepted))
        quota = rcpt_refusal(self.factory.store, decision.mailboxes, txn.params.size)
        if quota is not None:  # mailhost.smtp.quota: after the envelope checks' verdict
            txn.quota_limited = True
            decided = quota if decided is None else decided.addCallback(
                lambda verdict: verdict if verdict is not None else quota)
        if decided is not None:
            return self._checked(decided, lambda: self._accept_rcpt(txn, rcpt, params, decision),
                                 lambda reply: txn.record(str(rcpt), reply.code))
        return self._accept_rcpt(txn, rcpt, params, decision)

    def _accept_rcpt(self, txn: Transaction, rcpt: Any, params: Any, decision: Decision) -> Reply:
        """RCPT passed the recipient policy and every check: the recipient is taken."""
        txn.record(str(rcpt), decision.reply.code)
        txn.accepted.append(str(rcpt))
        for mailbox in decision.mailboxes:
            txn.mailboxes[mailbox] = None
        queued = None
        if decision.remote is not None:
            key = decision.remote.lower()
            queued = QueueRecipient(decision.remote, params.notify, params.orcpt)
            if key not in txn.remote:
                txn.remote[key] = queued
        forwards = []
        for target in decision.forwards:  # a local alias forwarding to another domain
            forwards.append(QueueRecipient(target, params.notify, params.orcpt))
            txn.remote.setdefault(target.lower(), forwards[-1])
            txn.forwarded[target.lower()] = None
        txn.routes[str(rcpt)] = (tuple(decision.mailboxes),
                                 ((queued,) if queued is not None else ()) + tuple(forwards))
        return decision.reply

    def _checked(self, decided: defer.Deferred, accept: Callable[[], Reply],
                 refused: Callable[[Reply], None] | None = None) -> defer.Deferred | Reply:
        """Answer a command once the envelope checks (``mailhost.message.checks``)
        decided: with their refusal, or with ``accept()``'s reply. The session is busy
        meanwhile, so pipelined commands wait their turn.

        Checks that passed at once (the usual case: only the rate limits, which answer
        at once) give ``accept()``'s reply straight back, as a command without checks
        does: no callbacks, no busy turn and timer reset around it (issue 18)."""
        if decided.called and decided.result is None:
            return accept()
        def answer(verdict: Any) -> defer.Deferred | None:
            if self._closing:
                return None
            if verdict is not None:
                reply = Reply(verdict.code, verdict.status, verdict.text)
                if refused is not None:
                    refused(reply)
                return self._answer(reply)
            try:
                return self._answer(accept())
            except Reply as reply:
                return self._answer(reply)

        def failed(failure: Failure) -> defer.Deferred | None:
            log.failure("envelope checks failed", failure)
            if self._closing:
                return None
            return self._answer(Reply(451, "4.3.0", "Error: internal error, try again later"))

        return decided.addCallback(answer).addErrback(failed)

    def _storage_refusal(self, size: int | None) -> Reply | None:
        """At MAIL and RCPT, before the client uploads anything: 452 4.3.1 when a file
        system mail goes to has less than smtp.min_free_space (plus the declared SIZE)
        free, 451 when one is read-only (mailhost.diskspace)."""
        space = self.factory.space
        problem = None if space is None else space.shortage(size or 0)
        if problem is None:
            return None
        if problem == READ_ONLY:
            return Reply(451, "4.3.0", "Error: mail storage is read-only, try again later")
        return Reply(452, "4.3.1", "Insufficient system storage")

    def _storage_failed(self, what: str, failure: Failure) -> Reply:
        """The reply to a failed store or queue write: 452 4.3.1 when the disk is full,
        else 451 4.3.0. An OSError is the disk's fault and gets one log line; anything
        else is a bug and keeps its traceback."""
        tid = self._session.transaction.id if self._session.transaction else None
        problem = storage_problem(failure.value)
        if problem is None:
            log.failure("{what} for {id}", failure, what=what, id=tid)
        else:
            log.error("{what} for {id}: {error}", what=what, id=tid,
                      error=describe(failure.value), event="storage.error")
        if problem == FULL:
            return Reply(452, "4.3.1", "Insufficient system storage")
        if isinstance(failure.value, StoreUnavailable):
            return Reply(451, "4.3.0", "Error: mail storage is unavailable, try again later")
        return Reply(451, "4.3.0", "Error: queue file write error")

    def smtp_DATA(self, arg: str) -> Reply | None:  # noqa: N802
        txn = self._session.transaction
        if txn is None:
            return Reply(503, "5.5.1", "Error: need MAIL command")
        if arg:
            return Reply(501, "5.5.4", "Syntax: DATA")
        if not txn.results:
            return Reply(503, "5.5.1", "Error: need RCPT command")
        if not txn.has_recipients:
            return Reply(554, "5.5.1", "Error: no valid recipients")
        if self._delivery is not None:
            return Reply(503, "5.5.1", "Error: DATA after BDAT")
        error = self._start_delivery(txn)
        if error is not None:
            return error
        self._reader = DataReader(self._data_chunk, self.settings.max_message_size,
                                  self.settings.max_line_length)
        self._start_data_budget()
        return _GO_AHEAD

    def _start_delivery(self, txn: Transaction) -> Reply | None:
        """Open the writers for the accepted recipients (at DATA or the first BDAT)."""
        received = received_header(
            helo=self._session.helo, client_ip=self._session.client_ip,
            hostname=self.settings.hostname, protocol=self._session.protocol_name,
            tid=txn.id, recipient=txn.accepted[0] if len(txn.accepted) == 1 else None,
            client_name=self._client.name if self._client is not None else None)
        try:
            def route(quarantined: bool = False) -> list:
                mailboxes, remote = list(txn.mailboxes), list(txn.remote.values())
                if txn.context is not None and txn.context.recipients_changed:
                    mailboxes, remote = self._reroute(txn, txn.context.recipients)
                return targets_for(self.factory.store, self.factory.queue, str(txn.sender),
                                   mailboxes, remote,
                                   envid=txn.params.envid, ret=txn.params.ret,
                                   quarantined=quarantined)

            if txn.context is not None:  # the pipeline decides the targets at the end
                txn.context.recipients = list(txn.accepted)
                txn.context.forwarded = list(txn.forwarded)
                self._delivery = Delivery((), header=received, pipeline=self.factory.pipeline,
                                          context=txn.context, route=route,
                                          reactor=self.factory.reactor)
            else:
                self._delivery = Delivery(route(), header=received)
        except Exception:
            return self._storage_failed("cannot start message", Failure())
        self._hops = HopCounter()
        self._newlines = BareNewlines(self.settings.bare_newline)
        self._bdat_total = 0
        return None

    def _reroute(self, txn: Transaction, recipients: list[str]
                 ) -> tuple[list[str], list[QueueRecipient]]:
        """Routing for the recipients a pipeline stage (a milter) left and added: the
        RCPT-time decision for those SMTP accepted, the recipient policy for new ones
        (one it refuses, such as a relay the client may not use, is logged and left out)."""
        mailboxes: dict[str, None] = {}
        remote: dict[str, QueueRecipient] = {}
        for address in recipients:
            route = txn.routes.get(address)
            if route is None:
                try:
                    rcpt, params = parse_rcpt_arg(f"<{address}>", utf8=txn.params.smtputf8)
                    decision = self.factory.policy.decide(
                        rcpt, params, self._session.client_ip, self._session.user)
                except Reply as reply:
                    log.warn("{tid}: recipient <{rcpt}> added by the pipeline refused: {reply}",
                             event="smtp.added_rcpt_refused", tid=txn.id, rcpt=address,
                             reply=reply.to_bytes().decode("utf-8", "replace").strip())
                    continue
                route = (tuple(decision.mailboxes), tuple(
                    QueueRecipient(a, params.notify, params.orcpt)
                    for a in ((decision.remote,) if decision.remote is not None else ())
                    + decision.forwards))
            for mailbox in route[0]:
                mailboxes[mailbox] = None
            for queued in route[1]:
                remote.setdefault(queued.address.lower(), queued)
        return list(mailboxes), list(remote.values())

    def smtp_BDAT(self, arg: str) -> Reply | None:  # noqa: N802
        """RFC 3030 CHUNKING. The chunk is read even when it will be refused."""
        parsed = _bdat_args(arg)
        if parsed is None:
            return Reply(501, "5.5.4", "Syntax: BDAT <size> [LAST]")
        length, last = parsed
        txn = self._session.transaction
        error = None
        if txn is None:
            error = Reply(503, "5.5.1", "Error: need MAIL command")
        elif not txn.results:
            error = Reply(503, "5.5.1", "Error: need RCPT command")
        elif not txn.has_recipients:
            error = Reply(554, "5.5.1", "Error: no valid recipients")
        elif self._delivery is None:
            error = self._start_delivery(txn)
            if error is not None:
                self._session.reset_transaction()
        offset = self._bdat_total if error is None else 0
        self._chunk = (last, error)
        self._reader = ChunkReader(self._data_chunk if error is None else None, length,
                                   self.settings.max_message_size, offset)
        self._start_data_budget()
        if length == 0:
            self._feed_data(b"")
        return None

    def smtp_BURL(self, arg: str) -> defer.Deferred:  # noqa: N802
        """RFC 4468 BURL: a chunk fetched by IMAP URL (mailhost.smtp.burl)."""
        return burl.command(
            arg, fetcher=self.factory.url_fetcher, submission=self.factory.submission,
            user=self._session.user, state=self._burl_state,
            room=lambda: self.settings.max_message_size - self._bdat_total,
            add_chunk=self._burl_chunk,
            answer=lambda reply: None if self._closing else self._answer(reply),
            reset=lambda: self._reset_transaction("BURL failed"))

    def _burl_state(self) -> Reply | None:
        txn = self._session.transaction
        if txn is None:
            return Reply(503, "5.5.1", "Error: need MAIL command")
        if not txn.results:
            return Reply(503, "5.5.1", "Error: need RCPT command")
        if not txn.has_recipients:
            return Reply(554, "5.5.1", "Error: no valid recipients")
        return None

    def _burl_chunk(self, data: bytes, last: bool) -> defer.Deferred | None:
        """BURL's octets as a BDAT chunk of their size, fed whole at once."""
        if self._closing:  # gone (or told goodbye) while the URL was read: nothing opens
            return None
        txn = self._session.transaction
        error = self._burl_state()
        if error is None and self._delivery is None:
            assert txn is not None  # _burl_state saw it
            error = self._start_delivery(txn)
            if error is not None:
                self._session.reset_transaction()
        if error is not None:
            return self._answer(error)
        self._chunk = (last, None)
        self._reader = ChunkReader(self._data_chunk, len(data), self.settings.max_message_size,
                                   self._bdat_total)
        self._reader.feed(data)
        if not self._chunk_done():
            return None
        return self._end_of_data()

    def _chunk_done(self) -> bool:
        """A BDAT chunk was consumed: answer it. True when the message must commit."""
        assert self._chunk is not None and self._reader is not None  # a chunk was read
        last, error = self._chunk
        reader = self._reader
        self._chunk = None
        self.setTimeout(self.settings.command_timeout)
        if error is not None:
            self._reader = None
            self._send(error)
            return False
        self._bdat_total = reader.size
        if reader.error is not None or last:
            return True  # _end_of_data answers (and aborts on error)
        self._reader = None
        self._send(Reply(250, "2.0.0", f"Ok: {reader.size} octets received"))
        return False

    def _data_chunk(self, data: bytes) -> None:
        """DataReader sink: apply the bare CR/LF policy, count hops in the header
        block, stream into the delivery targets."""
        reader, delivery = self._reader, self._delivery
        assert reader is not None and delivery is not None and self._newlines is not None
        data = self._newlines.feed(data)
        if self._newlines.found is not None:
            reader.error = self._bare_newline_reply()
            return
        if self._hops is not None and not self._hops.done:
            self._hops.feed(data)
            if self._hops.count > self.settings.max_hops:
                reader.error = Reply(554, "5.4.6", "Too many hops")
                return
        try:
            delivery.write(data)
        except Exception:
            reader.error = self._storage_failed("store write failed", Failure())

    def _bare_newline_reply(self) -> Reply:
        """``smtp.bare_newline = "reject"``: Postfix's reply (and, as Postfix does, the
        session is closed after it: the client's idea of where the message ended is
        not ours)."""
        assert self._newlines is not None
        return Reply(550, "5.5.2", f"Error: bare {self._newlines.found} received")

    def _end_of_data(self) -> defer.Deferred:
        """Final dot (or BDAT LAST) seen: commit or refuse, answer, back to commands."""
        reader, delivery, txn = self._reader, self._delivery, self._session.transaction
        newlines = self._newlines
        assert reader is not None and delivery is not None and newlines is not None
        if reader.error is None:  # the whole message is in: a CR it ended with is bare
            newlines.finish()
            if newlines.found is not None:
                reader.error = self._bare_newline_reply()
        self._reader = self._delivery = self._hops = self._newlines = None
        self.setTimeout(None)  # a slow disk is not the client's fault
        if self._verb is None:  # DATA: the body is in; BDAT-LAST is still under way
            self._verb = "DATA-END"
            self.registry.started(self, "DATA-END")
        if self._cut:  # the dispatch hook's CUT: nothing is committed
            delivery.abort()
            self._cut_now()
            return defer.succeed(None)
        if reader.error is not None:
            delivery.abort()
            self._answer_data(txn, reader.size, reader.error)
            if newlines.found is not None:
                self._close()
            return defer.succeed(None)
        assert txn is not None  # DATA and BDAT need a transaction
        # Asked again only if a recipient had a limit at RCPT (or a pipeline stage
        # changed the recipients): a quota= added in the seconds between applies from
        # the next message (issue 18: two passwd look-ups a message saved).
        too_big = data_refusal(self.factory.store, list(txn.mailboxes), bool(txn.remote),
                               reader.size) if txn.quota_limited or (
            txn.context is not None and txn.context.recipients_changed) else None
        if too_big is not None:  # larger than the whole quota (mailhost.smtp.quota)
            delivery.abort()
            self._answer_data(txn, reader.size, too_big)
            return defer.succeed(None)
        self._committing = True

        def committed(queue_ids: list[str]) -> Reply:
            assert txn is not None  # DATA and BDAT need a transaction
            return Reply(250, "2.0.0", f"Ok: queued as {txn.id}"
                         + (f" (outbound {', '.join(queue_ids)})" if queue_ids else ""))

        def failed(failure: Failure) -> Reply:
            if failure.check(Reply):  # the message pipeline refused it
                return failure.value
            return self._storage_failed("commit failed", failure)

        d = delivery.commit()
        d.addCallbacks(committed, failed)
        return d.addCallback(lambda reply: self._answer_data(txn, reader.size, reply))

    def _answer_data(self, txn: Transaction | None, size: int, reply: Reply) -> None:
        self._committing = False
        if reply.code == 250:
            self._errors = 0  # the error limits count errors without a delivery
            self._octets = size
        self._log_transaction(txn, size, reply.to_bytes().decode("utf-8", "replace").strip())
        self._session.reset_transaction()
        if not self._closing:
            self.setTimeout(self.settings.command_timeout)
            self._send(reply)

    def _log_transaction(self, txn: Transaction | None, size: int | None, outcome: str) -> None:
        if txn is None:
            return
        log.info(
            "smtp {tid} client={client} helo={helo} from=<{sender}> rcpts={recipients} "
            "rcpt_count={rcpt_count} size={size} result={outcome}",
            event="smtp.transaction", tid=txn.id, client=self._session.client_ip,
            helo=self._session.helo, sender=str(txn.sender), recipients=list(txn.results),
            rcpt_count=txn.rcpt_count,
            size=size, outcome=outcome, user=self._session.user,
            submission=self.factory.submission,
        )


def _local_ip(transport: Any) -> str:
    """Our address on this connection ("" on a UNIX socket), for the pipeline."""
    host = transport.getHost()
    return host.host if isinstance(host, IPv4Address | IPv6Address) else ""


def _bdat_args(arg: str) -> tuple[int, bool] | None:
    """(chunk size, LAST?) of a well-formed BDAT argument, else None (no chunk follows)."""
    words = arg.split(" ")
    if (not 1 <= len(words) <= 2 or not (words[0].isascii() and words[0].isdigit())
            or len(words[0]) > 12
            or (len(words) == 2 and words[1].upper() != "LAST")):
        return None
    return int(words[0]), len(words) == 2


__all__ = ["SMTPServer", "MAX_COMMAND_LINE", "NULL_ADDRESS"]
