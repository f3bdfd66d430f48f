"""The POP3 protocol (RFC 1939, 2449 CAPA/RESP-CODES, 2595 STLS, 5034 SASL PLAIN).

Why not a subclass of ``twisted.mail.pop3.POP3``: the fixes would replace most of it.
Its RETR transform is wrong (``.`` unstuffed at chunk starts, CRLF turned into
``\\r\\r\\n``), its AUTH only fits challenge-response mechanisms (no SASL PLAIN with an
initial response), it has no STLS, ``DELE 0`` deletes the last message, deleted
messages stay in LIST/UIDL, and its ``IMailbox`` API is synchronous where our store
returns Deferreds. What remains after overriding all that is a command table, so the
protocol is written here on ``Protocol`` + ``TimeoutMixin``: command lines are split
by hand (so an over-long line costs the client an ``-ERR``, not the connection, and
pipelined commands wait while an asynchronous one runs), the maildrop snapshot is in
``maildrop.py`` and the streaming, dot-stuffed RETR/TOP in ``transfer.py``.

Slow clients: ``pop3.timeout`` is a deadline for a whole command line (bytes that do
not end a line do not restart it), ``pop3.preauth_timeout`` bounds the time from
connect to a successful login, and a session that has not logged in may be closed to
make room for a new client when the listener is full (``IEvictable``,
``mailhost.limits``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhost.auth.login import LoginFailed, LoginService, transport_is_tls
from mailhost.auth.sasl import SASLError, decode_plain
from mailhost.limits import IEvictable
from mailhost.pop3.lock import MaildropLocks
from mailhost.pop3.maildrop import DeletePolicy, Maildrop
from mailhost.pop3.transfer import MessageSender
from mailhost.replytext import clean
from mailhost.sessions import CUT, GREETING, HeldVerdict, ISession, Refuse, SessionRegistry
from mailhost.store.interfaces import NoSuchMessage, StoreUnavailable
from mailhost.tcp import DirectWriter, QuickAck, send_at_once
from mailhost.tls import cancel_deadline, start_tls

log = Logger()

# RFC 2449 allows 255 octets per command; be lenient with clients that send more.
MAX_LINE = 1024
# Protocol errors (unknown commands, bad arguments) before the server gives up.
MAX_ERRORS = 20
# While a command runs, pipelined input is buffered up to this size, then reading stops.
_MAX_PENDING_INPUT = 64 * 1024

AUTHORIZATION, TRANSACTION, UPDATE = "AUTHORIZATION", "TRANSACTION", "UPDATE"

_PLAINTEXT_REFUSED = (
    "-ERR [AUTH] Plaintext authentication disallowed on non-secure connection; use STLS first"
)


def parse_number(text: str) -> int | None:
    """A message number as RFC 1939 writes it (ASCII digits), or None."""
    if not text or len(text) > 10 or not text.isascii() or not text.isdigit():
        return None
    return int(text)



# \Seen for retrieved messages is set in batches of this many, or after this delay.
SEEN_BATCH = 64
SEEN_DELAY = 0.2

@implementer(IEvictable, ISession)
class POP3Server(Protocol, TimeoutMixin):
    """One POP3 session.

    Implements: IEvictable (idle in the AUTHORIZATION state) and ISession (it reports
    its commands to the host's ``SessionRegistry`` and asks its dispatch hook first).
    """

    # The connected TCP or TLS transport (also ITCPTransport, ITLSTransport, IConsumer,
    # IPushProducer); Twisted declares only ITransport | None.
    transport: Any
    # The STARTTLS handshake deadline, cancelled when the connection closes.
    _tls_deadline: Any = None

    protocol = "pop3"

    def __init__(self, login: LoginService, locks: MaildropLocks, delete_policy: DeletePolicy,
                 timeout: float, tls_options: Any = None, reactor: Any = None,
                 handshake_timeout: float = 30.0,
                 on_close: Callable[[POP3Server], None] | None = None,
                 preauth_timeout: float = 0.0,
                 registry: SessionRegistry | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.registry = registry if registry is not None else SessionRegistry(reactor)
        self._verb: str | None = None  # the command whose status line is awaited
        self._cut = False  # the dispatch hook said CUT for it
        self._held = HeldVerdict("POP3", lambda: self._closed)
        self.login = login
        self.locks = locks
        self.delete_policy = delete_policy
        self.timeout = timeout
        self.preauth_timeout = preauth_timeout
        self._preauth_call: Any = None
        self._progress = 0.0  # reactor time of the last complete command line
        self.tls_options = tls_options
        self.handshake_timeout = handshake_timeout
        self.reactor = reactor
        self._on_close = on_close
        self.state = AUTHORIZATION
        self.client_ip = ""
        self.avatar: Any = None
        self.maildrop: Maildrop | None = None
        self._buf = bytearray()
        self._discarding = False  # skipping the rest of an over-long line
        self._busy = False
        self._reading_paused = False
        self._closed = False
        self._errors = 0
        self._user_arg: str | None = None
        self._sasl_pending = False
        self._sender: MessageSender | None = None
        # Every response goes out through it (mailhost.tcp.DirectWriter): a RETR's
        # status line and body leave at once instead of on the reactor's next turn.
        self._writer: DirectWriter | None = None
        self._pending_flags: set[defer.Deferred[Any]] = set()  # \Seen updates in flight
        self._seen_queue: list[int] = []  # retrieved, \Seen not yet asked of the store
        self._seen_timer: Any = None
        self._locked_user: str | None = None
        self.user: str | None = None  # the logged-in user, kept for the session-end log
        self._retrieved = 0
        self._retrieved_octets = 0
        self._deleted = 0
        self._quick_ack: QuickAck | None = None
        self._end_reason = "disconnected"
        self._logged = False
        self._table = self._handlers()

    def callLater(self, period: float, func: Callable[[], None]) -> Any:
        """TimeoutMixin's clock: our reactor, so tests can pass a task.Clock."""
        return self.reactor.callLater(period, func)

    # -- connection --------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.client_ip = getattr(peer, "host", "")
        self.registry.opened(self)
        send_at_once(self.transport)
        self._quick_ack = QuickAck(self.transport)
        self._writer = DirectWriter(self.transport)
        self._progress = self.reactor.seconds()
        self.setTimeout(self.timeout)
        if self.preauth_timeout > 0:
            self._preauth_call = self.reactor.callLater(self.preauth_timeout,
                                                        self._preauth_deadline)
        verdict = self.registry.before_command(self, GREETING, "")
        if isinstance(verdict, defer.Deferred):
            self._busy = True  # nothing is read before the greeting
            self._held.wait(verdict, self._greet)
        else:
            self._greet(verdict)

    def _greet(self, verdict: Any) -> None:
        self._busy = False
        if isinstance(verdict, Refuse):
            self._send(f"-ERR {verdict.text}")
            self._close()
        elif verdict is CUT:
            self._cut_now()
        else:
            self._send("+OK mailhost POP3 server ready")
            self._process()

    # -- ISession ----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """See ISession: a command (a transfer, the UPDATE state) is running."""
        return self._busy

    def goodbye(self, reason: str) -> None:
        """See ISession: close without a word and without UPDATE, so no message
        marked with DELE is deleted (RFC 1939)."""
        if self._closed:
            return
        self._end_reason = "shutdown"
        self._close()

    def _cut_now(self) -> None:
        """The dispatch hook's CUT: the client hears nothing more."""
        self._cut = False
        self._closed = True
        self._cancel_preauth()
        self.transport.abortConnection()

    def _preauth_deadline(self) -> None:
        """``pop3.preauth_timeout`` passed before a login. A login still being checked
        is our delay, not the client's: look again once it is answered."""
        self._preauth_call = None
        if self._closed or self.state != AUTHORIZATION:
            return
        if self._busy:
            self._preauth_call = self.reactor.callLater(1.0, self._preauth_deadline)
            return
        self._end_reason = "timeout"
        self._send("-ERR [SYS/TEMP] Autologout; no login in time")
        self._close()

    def _cancel_preauth(self) -> None:
        if self._preauth_call is not None and self._preauth_call.active():
            self._preauth_call.cancel()
        self._preauth_call = None

    def idle_since(self) -> float | None:
        """See IEvictable: idle before login, with no command running."""
        if self._closed or self._busy or self.state != AUTHORIZATION:
            return None
        return self._progress

    def evict(self, line: bytes) -> None:
        """See IEvictable."""
        if self._closed:
            return
        self._end_reason = "evicted"
        self._write(line)
        self._close()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closed = True
        if self._writer is not None:
            self._writer.stop()
        self.setTimeout(None)
        cancel_deadline(self._tls_deadline)
        self._cancel_preauth()
        if self._sender is not None:
            self._sender.stopProducing()
        if self.maildrop is not None and self._seen_queue:
            self._flush_seen(self.maildrop.folder)  # retrieved is retrieved, QUIT or not
        if self.state != UPDATE:
            # A dropped connection or a timeout deletes nothing (RFC 1939 section 6).
            self._release()
        self._held.cancel()
        if self._on_close is not None:
            self._on_close(self)
        self.registry.closed(self)

    def timeoutConnection(self) -> None:
        if self.state == UPDATE:
            return
        self._end_reason = "timeout"
        self._send("-ERR Autologout; idle for too long")
        if self._sender is not None:
            # The client stopped reading mid-transfer; a graceful close would wait forever.
            self.transport.abortConnection()
        else:
            self._close()

    def _unlock(self) -> None:
        """Let go of the maildrop: the file opened ahead, the lock, the avatar."""
        if self.maildrop is not None:
            self.maildrop.discard_prefetch()
        if self._locked_user is not None:
            self.locks.release(self._locked_user)
            self._locked_user = None
        if self.avatar is not None:
            avatar, self.avatar = self.avatar, None
            avatar.logout()

    def _release(self) -> None:
        """End the session: unlock, and log one event."""
        self._unlock()
        if not self._logged:
            self._logged = True
            log.info(
                "pop3 session ended user={user} client={client} reason={reason} "
                "retrieved={retrieved} octets={octets} deleted={deleted}",
                event="pop3_session_end", user=self.user, client=self.client_ip,
                reason=self._end_reason, retrieved=self._retrieved,
                octets=self._retrieved_octets, deleted=self._deleted,
            )

    def _close(self) -> None:
        self._closed = True
        self._cancel_preauth()
        self.transport.loseConnection()

    # -- input -------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._buf += data
        if self._busy and len(self._buf) > _MAX_PENDING_INPUT and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()
        self._process()
        if self._buf and self._quick_ack is not None:
            # Half a line, no reply yet: the client may hold the rest until we ACK.
            self._quick_ack.now()

    def _process(self) -> None:
        """Run buffered command lines until one goes asynchronous."""
        while not self._busy and not self._closed:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > MAX_LINE:
                    self._discarding = True
                    del self._buf[:]
                break
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if self._discarding or len(line) > MAX_LINE + 1:
                self._discarding = self._sasl_pending = False
                self._fail("-ERR Line too long")
                continue
            self.resetTimeout()
            self._progress = self.reactor.seconds()
            self._line(line[:-1] if line.endswith(b"\r") else line)
        if self._reading_paused and not self._busy and not self._closed:
            self._reading_paused = False
            self.transport.resumeProducing()

    def _run(self, work: Awaitable[Any]) -> None:
        """Run an asynchronous command; later pipelined lines wait until it is done."""
        self._busy = True

        def done(result: Any) -> None:
            self._busy = False
            if isinstance(result, Failure):
                log.failure("pop3 command failed", result)
                if not self._closed:
                    self._send("-ERR [SYS/TEMP] Internal error")
                    self._close()
                return
            self._process()

        defer.Deferred.fromCoroutine(work).addBoth(done)  # type: ignore[arg-type]

    def _line(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._fail("-ERR Command is not valid UTF-8")
            return
        if self._sasl_pending:
            self._sasl_pending = False
            self._sasl_response(text.strip())
            return
        command, _, arg = text.partition(" ")
        verb = command.upper()
        handler = self._table.get((self.state, verb))
        if handler is None:
            self._fail("-ERR Unknown command or not allowed now")
            return
        verdict = self.registry.before_command(self, verb, text)
        if self._closed:
            return  # told goodbye (drain)
        if isinstance(verdict, defer.Deferred):
            self._busy = True  # held: later pipelined lines wait
            self._held.wait(verdict, self._resume, verb, handler, arg)
            return
        self._execute(verdict, verb, handler, arg)

    def _resume(self, verdict: Any, verb: str, handler: Callable[[str], None],
                arg: str) -> None:
        self._busy = False
        self._execute(verdict, verb, handler, arg)
        self._process()

    def _execute(self, verdict: Any, verb: str, handler: Callable[[str], None],
                 arg: str) -> None:
        """Run one command (or refuse it, as the dispatch hook said) and report it."""
        self._verb = verb
        self._cut = verdict is CUT
        self.registry.started(self, verb)
        if isinstance(verdict, Refuse):
            self._send(f"-ERR {verdict.text}")
            return
        handler(arg)

    def _handlers(self) -> dict[tuple[str, str], Callable[[str], None]]:
        both: dict[str, Callable[[str], None]] = {"CAPA": self.do_CAPA, "QUIT": self.do_QUIT}
        table = {(AUTHORIZATION, name): fn for name, fn in both.items()}
        table.update({(TRANSACTION, name): fn for name, fn in both.items()})
        for name in ("USER", "PASS", "AUTH", "STLS"):
            table[(AUTHORIZATION, name)] = getattr(self, "do_" + name)
        for name in ("STAT", "LIST", "UIDL", "TOP", "RETR", "DELE", "RSET", "NOOP"):
            table[(TRANSACTION, name)] = getattr(self, "do_" + name)
        return table

    # -- output ------------------------------------------------------------------

    def _finish(self, status_line: str) -> bool:
        """A status line goes out: report the command's end; False if it is cut."""
        if self._verb is None or status_line.startswith("+ ") or status_line == "+":
            return True  # no command under way, or a SASL continuation
        verb, self._verb = self._verb, None
        self.registry.finished(self, verb, "+OK" if status_line.startswith("+OK") else "-ERR", 0)
        if self._cut:
            self._cut_now()
            return False
        return True

    def _send(self, line: str) -> None:
        """One response line, cleaned of control characters (mailhost.replytext)."""
        if self._finish(line):
            self._write(clean(line, 510).encode("utf-8") + b"\r\n")

    def _send_lines(self, first: str, lines: list[str]) -> None:
        """A multi-line response; no line here starts with '.', so no stuffing is needed.

        Only the status line can carry outside text; the others are ours (numbers,
        sizes, UIDLs, capability names), so they are not cleaned one by one."""
        if not self._finish(first):
            return
        body = "".join(f"{line}\r\n" for line in lines)
        self._write(f"{clean(first, 510)}\r\n{body}.\r\n".encode())

    def _write(self, data: bytes) -> None:
        if self._writer is None:  # not connected yet (nothing writes before connect)
            self.transport.write(data)
        else:
            self._writer.write(data)

    def _fail(self, reply: str) -> None:
        """A protocol error: answer it, and give up on a client that keeps erring."""
        self._errors += 1
        if self._errors >= MAX_ERRORS:
            self._end_reason = "too many errors"
            self._send("-ERR Too many errors, closing connection")
            self._close()
            return
        self._send(reply)

    # -- AUTHORIZATION -----------------------------------------------------------

    def _tls_available(self) -> bool:
        return self.tls_options is not None and not transport_is_tls(self.transport)

    def do_CAPA(self, arg: str) -> None:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER"]
        if self.state == AUTHORIZATION:
            if self.login.plaintext_allowed(self.transport):
                caps += ["USER", "SASL PLAIN"]
            if self._tls_available():
                caps.append("STLS")
        caps.append("IMPLEMENTATION mailhost")
        self._send_lines("+OK Capability list follows", caps)

    def do_STLS(self, arg: str) -> None:
        if not self._tls_available():
            self._fail("-ERR STLS not available")
            return
        # CVE-2011-0411: whatever the client pipelined after STLS came in the clear;
        # it must not run as if it had come over TLS.
        del self._buf[:]
        self._discarding = False
        self._user_arg = None
        self._send("+OK Begin TLS negotiation")
        if self._closed:
            return  # cut by the dispatch hook
        if self._writer is not None:
            self._writer.stop()  # TLS wraps the transport: writes go through it from now on
        self._tls_deadline = start_tls(self.transport, self.tls_options,
                                       self.handshake_timeout, self.reactor)

    def do_USER(self, arg: str) -> None:
        if not self.login.plaintext_allowed(self.transport):
            self._send(_PLAINTEXT_REFUSED)
            return
        name = arg.strip()
        if not name:
            self._fail("-ERR Missing user name")
            return
        self._user_arg = name
        self._send("+OK Send PASS")

    def do_PASS(self, arg: str) -> None:
        if not self.login.plaintext_allowed(self.transport):
            self._send(_PLAINTEXT_REFUSED)
            return
        if self._user_arg is None:
            self._fail("-ERR USER first")
            return
        user, self._user_arg = self._user_arg, None
        self._run(self._authenticate(user, arg))

    def do_AUTH(self, arg: str) -> None:
        allowed = self.login.plaintext_allowed(self.transport)
        parts = arg.split()
        if not parts:
            # The pre-RFC 5034 mechanism listing some clients still send.
            self._send_lines("+OK Mechanisms follow", ["PLAIN"] if allowed else [])
            return
        if parts[0].upper() != "PLAIN" or len(parts) > 2:
            self._fail("-ERR Unsupported authentication mechanism")
            return
        if not allowed:
            self._send(_PLAINTEXT_REFUSED)
            return
        if len(parts) == 2:
            self._sasl_response(parts[1])
        else:
            self._sasl_pending = True
            self._send("+ ")

    def _sasl_response(self, response: str) -> None:
        """Check a SASL PLAIN response (RFC 4616): authzid NUL authcid NUL password."""
        try:
            authcid, password = decode_plain(response)
        except SASLError as e:
            if e.kind == "cancelled":
                self._send("-ERR [AUTH] Authentication cancelled")
            elif e.kind == "authzid":
                self._send("-ERR [AUTH] Proxy authorization is not supported")
            else:
                self._fail("-ERR [AUTH] Malformed SASL PLAIN response")
            return
        self._run(self._authenticate(authcid, password))

    async def _authenticate(self, username: str, password: str) -> None:
        try:
            avatar = await self.login.login(username, password, self.client_ip, "pop3")
        except LoginFailed as e:
            if not self._closed:
                if e.reason == "throttled":
                    self._send("-ERR [SYS/TEMP] Too many failed logins, try again later")
                elif e.reason == "error":  # logged by the LoginService
                    self._send("-ERR [SYS/TEMP] Temporary server failure, try again later")
                else:
                    self._send("-ERR [AUTH] Invalid user name or password")
            return
        if self._closed:
            avatar.logout()
            return
        if not self.locks.acquire(avatar.user):
            avatar.logout()
            self._send("-ERR [IN-USE] Maildrop is locked by another POP3 session")
            return
        self._locked_user = avatar.user
        self.avatar = avatar
        try:
            folder = await avatar.account.open_folder("INBOX")
            maildrop = await Maildrop.open(folder)
        except Exception as e:
            if isinstance(e, StoreUnavailable):  # the database away: one line, no traceback
                log.warn("pop3: cannot open maildrop of {user}: {e}", user=avatar.user, e=e)
            else:
                log.failure("pop3: cannot open maildrop of {user}", user=avatar.user)
            if not self._closed:
                self._unlock()  # the session stays in AUTHORIZATION
                self._send("-ERR [SYS/TEMP] Cannot open maildrop, try again later")
            return
        if self._closed:
            return  # connectionLost already released the lock
        self.maildrop = maildrop
        self.user = avatar.user
        self.state = TRANSACTION
        self._cancel_preauth()
        count, octets = maildrop.stat()
        self._send(f"+OK Maildrop has {count} messages ({octets} octets)")

    # -- TRANSACTION -------------------------------------------------------------

    def _message(self, arg: str) -> tuple[int, Any] | None:
        """Parse a message-number argument; answer -ERR and return None if it names nothing."""
        assert self.maildrop is not None
        number = parse_number(arg.strip())
        info = self.maildrop.get(number) if number is not None else None
        if info is None:
            self._send("-ERR No such message")
            return None
        return number, info  # type: ignore[return-value]

    def do_STAT(self, arg: str) -> None:
        assert self.maildrop is not None
        count, octets = self.maildrop.stat()
        self._send(f"+OK {count} {octets}")

    def do_LIST(self, arg: str) -> None:
        assert self.maildrop is not None
        if arg.strip():
            found = self._message(arg)
            if found:
                self._send(f"+OK {found[0]} {found[1].size}")
            return
        count, octets = self.maildrop.stat()
        self._send_lines(
            f"+OK {count} messages ({octets} octets)",
            [f"{n} {info.size}" for n, info in self.maildrop.live()],
        )

    def do_UIDL(self, arg: str) -> None:
        maildrop = self.maildrop
        assert maildrop is not None
        if arg.strip():
            found = self._message(arg)
            if found:
                self._send(f"+OK {found[0]} {maildrop.uidl(found[1])}")
            return
        self._send_lines(
            "+OK Unique-id listing follows",
            [f"{n} {maildrop.uidl(info)}" for n, info in maildrop.live()],
        )

    def do_RETR(self, arg: str) -> None:
        found = self._message(arg)
        if found:
            self._run(self._transfer(*found, None))

    def do_TOP(self, arg: str) -> None:
        parts = arg.split()
        lines = parse_number(parts[1]) if len(parts) == 2 else None
        if lines is None:
            self._fail("-ERR Usage: TOP message lines")
            return
        found = self._message(parts[0])
        if found:
            self._run(self._transfer(*found, lines))

    async def _transfer(self, number: int, info: Any, top_lines: int | None) -> None:
        assert self.maildrop is not None
        folder = self.maildrop.folder
        try:
            reader = await self.maildrop.open_message(number)
        except NoSuchMessage:
            self._send("-ERR Message was removed by another session")
            return
        if self._closed:
            reader.close()
            return
        status = f"+OK {info.size} octets" if top_lines is None else "+OK Top of message follows"
        if not self._finish(status) or self._closed:  # cut by the dispatch hook
            reader.close()
            return
        # The status line leaves with the body's first piece (one send for most mail).
        self._sender = MessageSender(self.transport, reader, top_lines, reactor=self.reactor,
                                     on_progress=self.resetTimeout, write=self._write,
                                     prefix=clean(status, 510).encode("utf-8") + b"\r\n")
        try:
            octets = await self._sender.start()
        except Exception as e:
            # Mid-response there is no way to say -ERR: the framing is lost, so hang up.
            if not self._closed:
                log.error("pop3 transfer of uid {uid} failed: {error}", uid=info.uid, error=e)
                self._end_reason = "transfer failed"
                self.transport.abortConnection()
            return
        finally:
            self._sender = None
        if top_lines is None:
            self._retrieved += 1
            self._retrieved_octets += octets
            if "\\Seen" not in info.flags:
                self._mark_seen(folder, info.uid)

    def _mark_seen(self, folder: Any, uid: int) -> None:
        """Queue \\Seen for a retrieved message; set in batches (one store call, one
        thread hop, for many RETRs), and always before QUIT answers or the session ends."""
        self._seen_queue.append(uid)
        if len(self._seen_queue) >= SEEN_BATCH:
            self._flush_seen(folder)
        elif self._seen_timer is None:
            self._seen_timer = self.reactor.callLater(SEEN_DELAY, self._flush_seen, folder)

    def _flush_seen(self, folder: Any) -> None:
        if self._seen_timer is not None and self._seen_timer.active():
            self._seen_timer.cancel()
        self._seen_timer = None
        uids, self._seen_queue = self._seen_queue, []
        if not uids:
            return
        d = folder.set_flags(uids, {"\\Seen"}, "add")
        d.addErrback(lambda f: log.failure("pop3: setting \\Seen failed", f))
        if not d.called:
            self._pending_flags.add(d)
            d.addBoth(lambda _: self._pending_flags.discard(d))

    def do_DELE(self, arg: str) -> None:
        assert self.maildrop is not None
        found = self._message(arg)
        if found:
            self.maildrop.delete(found[0])
            self._send(f"+OK Message {found[0]} deleted")

    def do_RSET(self, arg: str) -> None:
        assert self.maildrop is not None
        self.maildrop.reset()
        count, octets = self.maildrop.stat()
        self._send(f"+OK Maildrop has {count} messages ({octets} octets)")

    def do_NOOP(self, arg: str) -> None:
        self._send("+OK")

    def do_QUIT(self, arg: str) -> None:
        self._end_reason = "quit"
        if self.state == AUTHORIZATION:
            self._send("+OK mailhost POP3 server signing off")
            self._close()
            return
        self.state = UPDATE
        self._run(self._update())

    async def _update(self) -> None:
        """The UPDATE state: make the DELE marks durable, then answer and hang up."""
        assert self.maildrop is not None
        self._flush_seen(self.maildrop.folder)
        await defer.DeferredList(list(self._pending_flags))  # each logs its own failure
        try:
            self._deleted = await self.maildrop.commit(self.delete_policy)
        except Exception:
            log.failure("pop3: UPDATE failed for {user}", user=self.user)
            self._end_reason = "update failed"
            reply = "-ERR [SYS/TEMP] Some deleted messages were not removed"
        else:
            reply = f"+OK mailhost POP3 server signing off ({self._deleted} messages deleted)"
        self._release()
        if not self._closed:
            self._send(reply)
            self._close()
