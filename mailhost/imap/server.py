"""The IMAP4rev1 server protocol: framing, session state, dispatch, limits.

Our own protocol on Twisted's base ``Protocol`` + ``TimeoutMixin`` rather than
``twisted.mail.imap4.IMAP4Server``, which cannot be fixed by subclassing (see
TWISTED-MAIL-NOTES.md). It is not a ``LineReceiver`` either: LineReceiver drops
the connection on an over-long line and its raw-mode switching for every literal
fights a command queue that must pause while an asynchronous command runs; framing
lives in ``framing.Framer`` instead.

One command runs at a time; input that arrives meanwhile is buffered (and the
socket paused when the buffer grows). Command handlers live in ``commands_*.py``
and ``idle.py``; each is ``async def handler(session, command)`` returning the text
of the tagged OK, or raising ``responses.No``/``Bad``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from mailhost.auth.login import Login
from mailhost.diskspace import FULL, READ_ONLY, describe, storage_problem
from mailhost.imap import context, framing, parser
from mailhost.imap.catenate import CAPABILITIES as CATENATE_CAPABILITIES
from mailhost.imap.compress import DeflateError, Deflater, Inflater
from mailhost.imap.objects import CAPABILITIES as OBJECT_CAPABILITIES
from mailhost.imap.output import OutputGate
from mailhost.imap.quota import CAPABILITIES as QUOTA_CAPABILITIES
from mailhost.imap.responses import AlreadyReplied, CommandFailed
from mailhost.imap.selected import BadSequence, SelectedMailbox
from mailhost.imap.states import AUTHENTICATED, LOGOUT, NOT_AUTHENTICATED, SELECTED
from mailhost.imap.urlauth import CAPABILITIES as URLAUTH_CAPABILITIES
from mailhost.limits import IEvictable
from mailhost.replytext import clean_bytes
from mailhost.sessions import CUT, GREETING, HeldVerdict, ISession, Refuse
from mailhost.settings import IMAPSettings
from mailhost.store.interfaces import (
    FolderExists,
    IMailAccount,
    IMessageWriter,
    InvalidFolderName,
    NoSuchFolder,
    NoSuchMessage,
    QuotaExceeded,
    StoreError,
    StoreUnavailable,
)
from mailhost.tcp import DirectWriter, QuickAck, send_at_once
from mailhost.tls import cancel_deadline, start_tls

if TYPE_CHECKING:
    from mailhost.imap.factory import IMAPFactory
    from mailhost.imap.notify import Notifier

log = Logger()

#: Extensions advertised once logged in; before login some are left out.
CAPABILITIES = (
    b"IMAP4rev1", b"LITERAL+", b"SASL-IR", b"IDLE", b"NAMESPACE", b"UIDPLUS", b"MOVE",
    b"IMAP4rev2", b"LITERAL-", b"UTF8=ACCEPT",  # RFC 9051, 7888, 6855: mailhost.imap.rev2
    b"UNSELECT", b"CHILDREN", b"ID", b"ENABLE", b"SPECIAL-USE", b"CREATE-SPECIAL-USE",
    b"LIST-EXTENDED", b"LIST-STATUS", b"STATUS=SIZE", b"PREVIEW",
    b"BINARY", b"MULTIAPPEND",
    b"ESEARCH", b"SEARCHRES", b"WITHIN", b"I18NLEVEL=1", b"SORT", b"SORT=DISPLAY", b"ESORT",
    b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES", b"CONDSTORE", b"QRESYNC",
    b"CONTEXT=SEARCH", b"CONTEXT=SORT", b"NOTIFY",
)

#: Preauth literals are capped so an anonymous client cannot make us buffer much.
PREAUTH_MAX_LITERAL = 64 * 1024
#: Compressed input is inflated at most this much at a time (see mailhost.imap.compress).
INFLATE_PIECE = 64 * 1024
#: Consecutive BAD replies before the server gives up on a client.
MAX_BAD_COMMANDS = 20
#: APPEND literals at least this big stream into the store as they arrive.
STREAM_APPEND_OVER = 64 * 1024
#: After BYE, a client that does not read what is left gets cut off this much later.
CLOSE_GRACE = 10.0
#: Octets a long response (FETCH of a folder) writes before ``drain`` yields a reactor
#: turn: straight-to-socket writes never pause the output gate, so without this a
#: client that keeps up would hold the reactor for the whole response.
TURN_OCTETS = 256 * 1024
#: Pause reading when this much unprocessed input is buffered.
INPUT_HIGH_WATER = 1024 * 1024

Handler = Callable[["IMAPServer", parser.Command], Awaitable[bytes | None]]


def _registry() -> dict[str, tuple[frozenset[str], Handler]]:
    from mailhost.imap import (
        catenate,
        commands_auth,
        commands_mailbox,
        commands_search,
        commands_selected,
        condstore,
        context,
        idle,
        notify,
        quota,
        urlauth,
    )

    table: dict[str, tuple[frozenset[str], Handler]] = {}
    # condstore after those: it takes over the commands RFC 7162 extends; notify last:
    # it wraps the mailbox commands whose effects NOTIFY reports.
    for module in (commands_auth, commands_mailbox, commands_selected, commands_search, idle,
                   quota, catenate, urlauth, context, condstore, notify):
        table.update(module.HANDLERS)
    return table


#: Commands after which queued EXPUNGEs must not be sent (RFC 3501 7.4.1).
NO_EXPUNGE_AFTER = frozenset({"FETCH", "STORE", "SEARCH", "SORT", "THREAD"})


@implementer(IEvictable, ISession)
class IMAPServer(Protocol, TimeoutMixin):
    """One IMAP connection.

    Implements: IEvictable (idle before login) and ISession (it reports its commands
    to the host's ``SessionRegistry`` and asks its dispatch hook first; a command with
    a synchronizing literal is asked about before its ``+``). Before login,
    ``imap.preauth_timeout`` is a deadline for each whole command: bytes that do not
    complete one do not restart it, so a client trickling a byte at a time cannot
    hold a slot.
    """

    protocol = "imap"
    _handlers: dict[str, tuple[frozenset[str], Handler]] | None = None
    # A TCP or TLS transport, set before connectionMade: ITCPTransport, IConsumer (the
    # output gate registers on it) and IPushProducer (input is paused) at once, which no
    # one interface (Protocol's ITransport | None) spells.
    transport: Any
    # The STARTTLS handshake deadline, cancelled when the connection closes.
    _tls_deadline: Any = None

    def __init__(self, factory: IMAPFactory) -> None:
        self.factory = factory
        # The settings this session started with (a reload applies to later sessions).
        self.settings: IMAPSettings = factory.settings
        self.login_service = factory.login
        self.tls_options = factory.tls_options
        self.reactor = factory.reactor
        self.state = NOT_AUTHENTICATED
        self.avatar: Any = None
        self.user: str | None = None
        self.selected: SelectedMailbox | None = None
        self.enabled: set[str] = set()  # ENABLEd extensions (mailhost.imap.condstore)
        self.notifier: Notifier | None = None  # NOTIFY SET in force (mailhost.imap.notify)
        self._pushing = False  # unsolicited updates are being sent (_push)
        self._push_again = False
        self.idling = False
        self.tls_started = False
        self.framer = framing.Framer(self.settings.max_line_length,
                                     min(self.settings.max_literal_size, PREAUTH_MAX_LITERAL))
        self.gate = OutputGate()
        self.registry = factory.registry
        self._running = False  # a command runs (or waits for its dispatch verdict)
        self._early: Any = None  # verdict given before a synchronizing literal's '+'
        self._held = HeldVerdict("IMAP", lambda: self._closed)
        self._pumping = False
        self._line_waiter: defer.Deferred | None = None
        self._read_paused = False
        self._inflater: Inflater | None = None  # COMPRESS=DEFLATE, once active
        self._deflater: Deflater | None = None
        self._bad_count = 0
        self._commands = 0
        self._started = 0.0
        self._closed = False  # no more input is processed
        self._lost = False  # the transport is gone
        self.peer = "?"
        self.current: parser.Command | None = None
        #: Message writers filled by the next command's literals, as they arrived.
        self._streamed: list[StreamedMessage] = []
        #: The running command's streamed APPEND messages (one per MULTIAPPEND literal).
        self.append_writers: list[StreamedMessage] = []
        self._abort_call: Any = None
        self._progress = 0.0  # when the last complete command arrived (or connect)
        self.quick_ack: QuickAck | None = None
        # Every write goes through it (mailhost.tcp.DirectWriter): on plain TCP a FETCH
        # line goes to the socket at once, not through the reactor's next turn.
        self._writer: DirectWriter | None = None
        self._unyielded = 0  # octets sent since ``drain`` last gave up the turn

    # -- connection life cycle ------------------------------------------------------

    @property
    def handlers(self) -> dict[str, tuple[frozenset[str], Handler]]:
        if IMAPServer._handlers is None:
            IMAPServer._handlers = _registry()
        return IMAPServer._handlers

    def callLater(self, period: float, func: Callable[[], object]) -> Any:
        """TimeoutMixin's clock: the factory's reactor (a test's Clock) when it has one."""
        if self.reactor is not None:
            return self.reactor.callLater(period, func)
        return super().callLater(period, func)

    def connectionMade(self) -> None:
        self.registry.opened(self)
        self._started = time.monotonic()
        self._progress = self._now()
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", str(peer))
        send_at_once(self.transport)
        self.quick_ack = QuickAck(self.transport)
        self._writer = DirectWriter(self.transport)
        self.gate.on_resume = self._writer.resume
        self.transport.registerProducer(self.gate, True)
        self.setTimeout(self.settings.preauth_timeout)
        if not self.factory.connection_opened(self):
            self.send(b"* BYE Too many connections, try again later\r\n")
            self.close()
            return
        verdict = self.registry.before_command(self, GREETING, "")
        if isinstance(verdict, defer.Deferred):
            self._running = True  # nothing is read before the greeting
            self._held.wait(verdict, self._greet)
        else:
            self._greet(verdict)

    def _greet(self, verdict: Any) -> None:
        self._running = False
        if isinstance(verdict, Refuse):
            self._reply(None, b"NO", verdict.text.encode("utf-8", "replace"))
            self.close()
        elif verdict is CUT:
            self._cut_now()
        else:
            self.send(b"* OK [CAPABILITY " + self.capability_string()
                      + b"] mailhost ready\r\n")
            self._pump()

    # -- ISession -------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """See ISession: a command runs; IDLE counts as idle."""
        return self._running and not self.idling

    def goodbye(self, reason: str) -> None:
        """See ISession: ``* BYE`` and close."""
        if not self._closed:
            self.send(b"* BYE " + reason.encode("utf-8", "replace") + b"\r\n")
            self.close()

    def _cut_now(self) -> None:
        """The dispatch hook's CUT: the client hears nothing more."""
        self._closed = True
        if not self._lost:
            self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self._closed = True
        self._lost = True
        if self._writer is not None:
            self._writer.stop()
        cancel_deadline(self._tls_deadline)
        self._held.cancel()
        self._drop_streamed()
        self._drop_appends()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        self.setTimeout(None)
        self.gate.stopProducing()
        self.unselect()
        if self.notifier is not None:
            self.notifier.stop()
            self.notifier = None
        if self._line_waiter is not None:
            d, self._line_waiter = self._line_waiter, None
            d.callback(None)
        if self.avatar is not None:
            self.avatar.logout()
        self.factory.connection_closed(self)
        log.info(
            "imap session end user={user} client={client} duration={duration:.1f}s "
            "commands={commands}",
            event="imap_session_end", user=self.user, client=self.peer,
            duration=time.monotonic() - self._started, commands=self._commands,
        )
        self.registry.closed(self)

    def timeoutConnection(self) -> None:
        self.send(b"* BYE Autologout; idle for too long\r\n")
        self.close()

    def _now(self) -> float:
        return self.reactor.seconds() if self.reactor is not None else time.monotonic()

    def idle_since(self) -> float | None:
        """See IEvictable: not logged in, no command running or half read."""
        if (self._closed or self._running or self.state != NOT_AUTHENTICATED
                or self.framer.in_command):
            return None
        return self._progress

    def evict(self, line: bytes) -> None:
        """See IEvictable."""
        if not self._closed:
            self.send(line)
            self.close()

    def close(self) -> None:
        """Flush and close; further input is ignored. A peer that stops reading cannot
        hold the connection open: it is aborted after ``CLOSE_GRACE`` seconds.

        The output gate is unregistered first: Twisted's TLS transport starts its
        close (close_notify, then the TCP close) only once no producer is registered,
        so with the gate still in place a TLS session sat silent after ``LOGOUT``'s OK
        until ``CLOSE_GRACE`` aborted it, and the client (mbsync) saw a reset."""
        self.state = LOGOUT
        already = self._closed
        self._closed = True
        if self.transport is not None and not self._lost:
            if not already:
                if self._writer is not None:
                    self._writer.stop()  # what is written after this waits its turn
                self.transport.unregisterProducer()
                self.gate.stopProducing()  # nothing more will be written: release waiters
            self.transport.loseConnection()
            if not already and self.reactor is not None:
                self._abort_call = self.reactor.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        if not self._lost:
            self.transport.abortConnection()

    # -- output ---------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if not self._lost:
            if self._deflater is not None:
                data = self._deflater.deflate(data)
            if self._writer is not None:
                self._writer.write(data)
            else:  # not connected yet
                self.transport.write(data)
            self._unyielded += len(data)

    def drain(self) -> defer.Deferred:
        """Wait until the transport's send buffer has room, and give other sessions
        the reactor after each ``TURN_OCTETS`` written."""
        self.resetTimeout()
        if self.gate.paused or self.gate.stopped or self._unyielded < TURN_OCTETS:
            return self.gate.wait()
        self._unyielded = 0
        d: defer.Deferred = defer.Deferred()
        self.callLater(0, lambda: d.callback(None))
        return d

    @property
    def alive(self) -> bool:
        return not self._lost

    @property
    def tls_active(self) -> bool:
        return self.tls_started or ISSLTransport.providedBy(self.transport)

    def plaintext_allowed(self) -> bool:
        return self.login_service.plaintext_allowed(self.transport)

    def capability_string(self) -> bytes:
        caps = list(CAPABILITIES)
        caps.extend(OBJECT_CAPABILITIES + CATENATE_CAPABILITIES)
        if self.state != NOT_AUTHENTICATED and self._deflater is None:
            caps.append(b"COMPRESS=DEFLATE")
        caps.append(b"APPENDLIMIT=%d" % self.settings.max_literal_size)
        if self.state != NOT_AUTHENTICATED:
            caps.extend(QUOTA_CAPABILITIES)
            if self.settings.urlauth_dir:
                caps.extend(URLAUTH_CAPABILITIES)
        if self.state == NOT_AUTHENTICATED:
            if self.tls_options is not None and not self.tls_active:
                caps.append(b"STARTTLS")
            if self.plaintext_allowed():
                caps.append(b"AUTH=PLAIN")
            else:
                caps.append(b"LOGINDISABLED")
        return b" ".join(caps)

    # -- input ----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        if self.state != NOT_AUTHENTICATED:
            self.resetTimeout()  # before login only whole commands count (_dispatch)
        if self._inflater is not None:
            self._inflater.push(data)
            self._inflate()
            if self._closed:  # corrupt input
                return
        else:
            self.framer.feed(data)
        self._pump()
        if (self.framer.in_command or self.framer.buffered) and self.quick_ack is not None:
            # Part of a command, no reply yet: the client may hold the rest until we
            # acknowledge (imaplib's APPEND sends the literal and its CRLF apart).
            self.quick_ack.now()
        if (self.framer.buffered > INPUT_HIGH_WATER or self._inflating()) \
                and not self._read_paused:
            self._read_paused = True
            self.transport.pauseProducing()

    def read_line(self) -> defer.Deferred:
        """Deferred firing with the next raw line (AUTHENTICATE, IDLE); None on close."""
        assert self._line_waiter is None
        d: defer.Deferred = defer.Deferred()
        self._line_waiter = d
        if not self._closed:
            self.reactor.callLater(0, self._pump)
        return d

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._closed:
                if self._line_waiter is not None:
                    line = self.framer.next_line()
                    if line is None:
                        break
                    d, self._line_waiter = self._line_waiter, None
                    d.callback(line)
                    continue
                if self._running:
                    break
                event = self.framer.next_event()
                if event is None:
                    if self._inflating() and self._inflate():
                        continue
                    break
                self._on_event(event)
        finally:
            self._pumping = False
        if self._read_paused and self.framer.buffered < INPUT_HIGH_WATER // 2 \
                and not self._inflating() and not self._closed:
            self._read_paused = False
            self.transport.resumeProducing()

    def _on_event(self, event: framing.Event) -> None:
        if isinstance(event, framing.FramedCommand):
            self._dispatch(event.segments)
        elif isinstance(event, framing.NeedContinuation):
            if self._early is not None:  # asked already (a later literal of the command)
                self.send(b"+ Ready for literal data\r\n")
                return
            verb = _verb_of(event.line)
            verdict = self.registry.before_command(self, verb, event.line.decode(
                "utf-8", "replace")) if verb else None
            if self._closed:
                return
            if isinstance(verdict, defer.Deferred):
                self._running = True
                self._held.wait(verdict, self._continue, event.tag)
            else:
                self._continue(verdict, event.tag)
        else:
            self._early = None  # the command was dropped, and the literals it streamed
            self._drop_streamed()
        if isinstance(event, framing.LineTooLong):
            self._bad(event.tag, b"Line too long")
        elif isinstance(event, framing.LiteralTooBig):
            if event.name == "APPEND":
                self._reply(event.tag, b"NO", b"[TOOBIG] Message too large")
            else:
                self._bad(event.tag, b"[TOOBIG] Literal too large")
        elif isinstance(event, framing.TooLong):
            self._bad(event.tag, b"[TOOBIG] Command too long")

    def _continue(self, verdict: Any, tag: str) -> None:
        """The verdict on a command waiting for its synchronizing literal's ``+``."""
        self._running = False
        if isinstance(verdict, Refuse):
            # Instead of '+': the client sends no literal, and the next line is a command.
            self._drop_streamed()
            self.framer.abandon()
            self._reply(tag, b"NO", verdict.text.encode("utf-8", "replace"))
        else:
            self._early = CUT if verdict is CUT else _ASKED
            self.send(b"+ Ready for literal data\r\n")
        self._pump()

    def _reply(self, tag: str | None, status: bytes, text: bytes) -> None:
        self.send((tag or "*").encode("ascii", "replace") + b" " + status + b" "
                  + clean_bytes(text) + b"\r\n")

    def _bad(self, tag: str | None, text: bytes) -> None:
        self._reply(tag, b"BAD", text)
        self._bad_count += 1
        if self._bad_count >= MAX_BAD_COMMANDS:
            self.send(b"* BYE Too many invalid commands\r\n")
            self.close()

    def _literal_sink(self, segments: list[bytes], n: int) -> Any:
        """Stream a big APPEND literal straight into a store message writer."""
        if n < STREAM_APPEND_OVER or framing._head(segments[0])[1] != "APPEND":
            return None
        if any(b"CATENATE" in seg.upper() for seg in segments):
            return None  # CATENATE's TEXT parts are read from memory (mailhost.imap.catenate)
        if segments[-1].rstrip(b"+}0123456789").endswith(b"~{"):
            return None  # a literal8 may hold NUL, re-encoded in memory (imap.binary_append)
        writer = StreamedMessage(self.account)
        self._streamed.append(writer)
        return writer

    def _drop_streamed(self) -> None:
        for writer in self._streamed:
            writer.abort()
        self._streamed = []

    def _drop_appends(self) -> None:
        """The command is over: what it did not commit is aborted (a no-op after commit)."""
        for writer in self.append_writers:
            writer.abort()
        self.append_writers = []

    def _dispatch(self, segments: list[bytes]) -> None:
        early, self._early = self._early, None
        self._progress = self._now()
        self.resetTimeout()
        self._drop_appends()
        self.append_writers, self._streamed = self._streamed, []
        try:
            cmd = parser.parse_command(segments)
        except parser.ParseError as e:
            self._bad(e.tag, e.message.encode("utf-8", "replace"))
            return
        self._commands += 1
        entry = self.handlers.get(cmd.name)
        if entry is None:
            self._bad(cmd.tag, b"Unknown command " + cmd.name.encode("ascii", "replace"))
            return
        states, handler = entry
        if self.state not in states:
            self._bad(cmd.tag, cmd.name.encode("ascii") + b" not allowed in " +
                      self.state.encode("ascii") + b" state")
            return
        verb = "UID " + cmd.name if cmd.uid else cmd.name
        if early is not None:
            verdict = None if early is _ASKED else early
        else:
            verdict = self.registry.before_command(
                self, verb, segments[0].decode("utf-8", "replace"))
            if self._closed:
                return
        self._running = True
        if isinstance(verdict, defer.Deferred):
            self._held.wait(verdict, self._execute, verb, handler, cmd)
        else:
            self._execute(verdict, verb, handler, cmd)

    def _execute(self, verdict: Any, verb: str, handler: Handler, cmd: parser.Command) -> None:
        """Run one command (or refuse it, as the dispatch hook said) and report it."""
        self.registry.started(self, verb)
        if isinstance(verdict, Refuse):
            self._drop_appends()  # streamed APPEND literals: not stored
            self.registry.finished(self, verb, "NO", 0)
            self._reply(cmd.tag, b"NO", verdict.text.encode("utf-8", "replace"))
            self._running = False
            self._pump()
            return
        self.current = cmd
        d = defer.ensureDeferred(self._run(handler, cmd, verb, verdict is CUT))
        d.addErrback(lambda f: log.failure("imap command crashed", f))

    async def _run(self, handler: Handler, cmd: parser.Command, verb: str,
                   cut: bool) -> None:
        status, text = b"OK", b""
        try:
            result = await handler(self, cmd)
            text = result if result is not None else cmd.name.encode("ascii") + b" completed"
        except AlreadyReplied:
            self.current = None
            self.registry.finished(self, verb, "OK", 0)
            self._running = False
            self._pump()
            return
        except parser.ParseError as e:
            status, text = b"BAD", e.message.encode("utf-8", "replace")
        except BadSequence as e:
            status, text = b"BAD", str(e).encode("utf-8", "replace")
        except CommandFailed as e:
            status, text = e.status, e.text.encode("utf-8", "replace")
        except StoreError as e:
            if isinstance(e, StoreUnavailable):
                log.error("imap command {name} failed: {error}", name=cmd.name, error=str(e),
                          user=self.user, event="storage.error")
            status, text = b"NO", store_error_text(e)
        except OSError as e:  # the disk's fault (full, read-only, I/O), not a bug: one line
            log.error("imap command {name} failed: {error}", name=cmd.name, error=describe(e),
                      user=self.user, event="storage.error")
            status, text = b"NO", storage_error_text(e)
        except Exception:
            log.failure("imap command {name} failed", name=cmd.name)
            status, text = b"NO", b"[SERVERBUG] Internal error"
        finally:
            self.current = None
            self._drop_appends()
        if self._lost:
            return
        self.registry.finished(self, verb, status.decode("ascii"), 0)
        if cut:
            self._cut_now()
            return
        if status == b"BAD":
            self._bad_count += 1
        else:
            self._bad_count = 0
        if self.state != LOGOUT:
            await self.send_all_updates(
                allow_expunge=cmd.name not in NO_EXPUNGE_AFTER or cmd.uid, with_uid=cmd.uid)
            if self._lost:
                return
        # The text may quote the client (a mailbox name) or an exception: no control
        # character of either reaches the wire (mailhost.replytext).
        self.send(cmd.tag.encode("ascii") + b" " + status + b" " + clean_bytes(text) + b"\r\n")
        if status == b"BAD" and self._bad_count >= MAX_BAD_COMMANDS:
            self.send(b"* BYE Too many invalid commands\r\n")
            self.close()
        if self.state == LOGOUT:
            self.close()
            return
        self._running = False
        self._pump()

    # -- the selected mailbox -------------------------------------------------------

    def send_updates(self, allow_expunge: bool = True, with_uid: bool = False) -> None:
        sel = self.selected
        if sel is not None and sel.has_pending:
            lines = sel.pending_updates(allow_expunge, with_uid)
            if lines:
                self.send(b"".join(lines))

    async def send_all_updates(self, allow_expunge: bool = True,
                               with_uid: bool = False) -> None:
        """``send_updates``, then what CONTEXT=SEARCH (``context``) and NOTIFY
        (``notify``: FETCH for new messages, other mailboxes' STATUS) add to it."""
        sel = self.selected
        last = sel.uids[-1] if sel is not None and sel.uids else 0
        if allow_expunge:  # CONTEXT: REMOVEFROM before the EXPUNGE (RFC 5267 4.3.4)
            context.removals_before_expunge(self)
        self.send_updates(allow_expunge, with_uid)
        if self.notifier is not None:
            await self.notifier.after_updates(last)
        await context.send_updates(self, allow_seqs=allow_expunge)

    def on_folder_event(self) -> None:
        """A listener event arrived: push it now if the client is in IDLE, or (NOTIFY
        with ``selected``) whenever no command runs."""
        if self._closed:
            return
        if self.idling:  # IDLE pushes everything, unless NOTIFY said (selected NONE)
            allow = None if self.notifier is not None and self.notifier.selected_silent() \
                else True
        elif self.notifier is not None and not self._running:
            allow = self.notifier.selected_push()
        else:
            return
        if allow is None:
            return
        if self._pushing:
            self._push_again = True
            return
        d = defer.ensureDeferred(self._push(allow))
        d.addErrback(lambda f: log.failure("imap unsolicited update failed", f))

    async def _push(self, allow_expunge: bool) -> None:
        """Send what changed; between commands the next command waits until it is out
        (a FETCH for NOTIFY's MessageNew takes a while)."""
        held = not self._running
        if held:
            self._running = True
        self._pushing = True
        try:
            for _ in range(100):  # bounded: each round sends what queued meanwhile
                self._push_again = False
                await self.send_all_updates(allow_expunge=allow_expunge)
                if not self._push_again or self._closed:
                    break
        finally:
            self._pushing = False
            if held:
                self._running = False
                self._pump()

    def select(self, sel: SelectedMailbox) -> None:
        self.unselect()
        self.selected = sel
        sel.attach()
        self.state = SELECTED

    def unselect(self) -> None:
        if self.selected is not None:
            self.selected.detach()
            self.selected = None
        if self.state == SELECTED:
            self.state = AUTHENTICATED

    # -- authentication -------------------------------------------------------------

    def logged_in(self, avatar: Login) -> None:
        if self._lost:  # the client left while the password was checked
            avatar.logout()
            return
        self.avatar = avatar
        self.user = avatar.user
        self.state = AUTHENTICATED
        self.framer.max_literal = self.settings.max_literal_size
        self.framer.max_command = self.settings.max_literal_size + 4 * self.settings.max_line_length
        self.framer.sink_for = self._literal_sink
        self.setTimeout(self.settings.timeout)

    @property
    def account(self) -> IMailAccount:
        """The logged-in user's IMailAccount (``IMailUser.account``): the session's one
        route to the store, APPEND included."""
        return self.avatar.account

    def start_compress(self) -> None:
        """COMPRESS=DEFLATE from the next octet on, both ways (the tagged OK went out
        uncompressed); anything the client sent after the command is compressed already."""
        log.info("imap: {peer} turned on COMPRESS=DEFLATE", peer=self.peer,
                 event="imap_compress")
        self._deflater = Deflater()
        self._inflater = Inflater()
        self._inflater.push(self.framer.take_buffered())
        self._inflate()

    @property
    def compressing(self) -> bool:
        return self._deflater is not None

    def _inflating(self) -> bool:
        """Compressed input waits for room in the framer."""
        return self._inflater is not None and self._inflater.pending

    def _inflate(self) -> bool:
        """Move inflated input into the framer while it has room; True if any moved.
        Corrupt input closes the connection."""
        assert self._inflater is not None
        fed = False
        try:
            while self.framer.buffered < INPUT_HIGH_WATER and self._inflater.pending:
                piece = self._inflater.pull(INFLATE_PIECE)
                if piece:
                    self.framer.feed(piece)
                    fed = True
        except DeflateError as e:
            log.info("imap: corrupt compressed input from {peer}: {error}", peer=self.peer,
                     error=str(e), event="imap_deflate_error")
            self.send(b"* BYE Corrupt compressed data\r\n")
            self.close()
            return False
        return fed

    def start_tls(self) -> None:
        """Discard anything pipelined behind STARTTLS (CVE-2011-0411), then upgrade."""
        self.framer.clear()
        if self._writer is not None:
            self._writer.stop()  # TLS wraps the transport: writes go through it now
        self._tls_deadline = start_tls(self.transport, self.tls_options,
                                       self.settings.handshake_timeout, self.reactor)
        self.tls_started = True


@implementer(IMessageWriter)
class StreamedMessage:
    """Implements: IMessageWriter, around the account's writer of a streamed APPEND literal.

    The literal is written as it arrives, from the framer, where an exception would
    drop the connection. A full or read-only disk (OSError) is kept instead, the rest
    of the literal is read and dropped, and the APPEND fails with that error (NO
    [OVERQUOTA] / [UNAVAILABLE]), as it would for a literal held in memory.
    """

    def __init__(self, account: IMailAccount) -> None:
        self.error: OSError | None = None
        self.nul = False
        self._writer: Any = None
        try:
            self._writer = account.new_message()
        except OSError as e:
            self.error = e

    @property
    def size(self) -> int:
        return 0 if self._writer is None else self._writer.size

    def write(self, data: bytes) -> None:
        if self.error is not None:
            return
        if b"\0" in data:
            self.nul = True  # NUL in a plain literal: APPEND answers BAD (RFC 3516)
        try:
            self._writer.write(data)
        except OSError as e:
            self.error = e
            self._writer.abort()

    def commit(self, targets: Any) -> defer.Deferred:
        if self.error is not None:
            return defer.fail(self.error)
        return self._writer.commit(targets)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()


def storage_error_text(e: OSError) -> bytes:
    """RFC 5530 codes for a storage failure, as Dovecot words them."""
    problem = storage_problem(e)
    if problem == FULL:
        return b"[OVERQUOTA] Not enough disk space"
    if problem == READ_ONLY:
        return b"[UNAVAILABLE] Mail storage is read-only, try again later"
    return b"[CANNOT] Mail storage error, try again later"


#: ``IMAPServer._early`` when the command was let through before its literal's '+'.
_ASKED = object()


def _verb_of(line: bytes) -> str:
    """The upper-case command of a first command line (``UID FETCH`` for UID ones)."""
    parts = line.split(None, 3)
    if len(parts) < 2:
        return ""
    verb = parts[1].decode("ascii", "replace").upper()
    if verb == "UID" and len(parts) > 2:
        verb = "UID " + parts[2].decode("ascii", "replace").upper()
    return verb


def store_error_text(e: StoreError) -> bytes:
    msg = str(e).encode("utf-8", "replace")
    if isinstance(e, NoSuchFolder):
        return b"[NONEXISTENT] " + (msg or b"No such mailbox")
    if isinstance(e, FolderExists):
        return b"[ALREADYEXISTS] " + (msg or b"Mailbox already exists")
    if isinstance(e, InvalidFolderName):
        return b"[CANNOT] " + (msg or b"Invalid mailbox name")
    if isinstance(e, QuotaExceeded):
        return b"[OVERQUOTA] " + (msg or b"Quota exceeded")
    if isinstance(e, NoSuchMessage):
        return b"[EXPUNGEISSUED] " + (msg or b"Message was expunged")
    if isinstance(e, StoreUnavailable):
        return b"[UNAVAILABLE] Mail storage is unavailable, try again later"
    return msg or b"Failed"
