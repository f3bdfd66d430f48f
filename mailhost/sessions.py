"""Sessions report themselves: ``ISession``, the per-host ``SessionRegistry`` and its drain.

Each protocol (SMTP, POP3, IMAP) already knows where its commands begin and end, so
it says so, instead of something beside it parsing the wire a second time:

- it registers with the host's ``SessionRegistry`` when the connection is made and
  leaves when it is lost;
- before it runs a command it asks the registry's dispatch hook (``before_command``),
  which may let it run (``None``), refuse it (``Refuse``), let it run and then cut the
  connection before the outcome reaches the client (``CUT``), or hold it for a while
  (a Deferred firing with one of those). The greeting is asked about as the command
  ``GREETING``. ``mailhost.testing`` injects its faults through this hook;
- it reports ``command_started`` and ``command_finished`` (with the verb and the
  reply's status) to the registry's observers. ``mailhost.metrics`` counts and times
  from these, per host.

On shutdown ``drain`` says ``goodbye`` to idle sessions at once (SMTP ``421 4.3.2``,
IMAP ``* BYE``, POP3 a close without UPDATE, so no pending DELE is applied, RFC 1939),
lets busy ones finish the work under way (an SMTP transaction's ``250`` means the
mail is durable) and aborts whatever is left after the grace period.

The registry is one object per mail host, handed to the protocol factories by
``service.py``; nothing here is global, so two hosts in one process never see each
other's sessions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Attribute, Interface

log = Logger()

#: The pseudo-verb under which the greeting is offered to the dispatch hook.
GREETING = "GREETING"


class HeldVerdict:
    """The one dispatch verdict a session may be waiting for (the hook answered with a
    Deferred). ``closed`` says whether the connection is gone: a verdict arriving
    after that is dropped, and ``cancel`` (from ``connectionLost``) stops the wait."""

    def __init__(self, protocol: str, closed: Callable[[], bool]) -> None:
        self._protocol = protocol
        self._closed = closed
        self._held: defer.Deferred[Any] | None = None

    def wait(self, verdict: defer.Deferred[Any], then: Callable[..., None],
             *args: Any) -> None:
        """Call ``then(verdict's result, *args)`` once it comes, unless closed by then."""
        self._held = verdict

        def given(result: Any) -> None:
            self._held = None
            if not self._closed():
                then(result, *args)

        verdict.addCallback(given)
        verdict.addErrback(lambda f: None if self._closed() else log.failure(
            "{protocol} dispatch hook failed", f, protocol=self._protocol))

    def cancel(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.cancel()


class ISession(Interface):
    """One live protocol session, as the mail host sees it."""

    protocol = Attribute("'smtp', 'submission', 'pop3' or 'imap'")
    busy = Attribute(
        "True while ending the session now would cut off work under way (an SMTP "
        "transaction, a running command); False when idle (IMAP IDLE counts as idle)")
    transport = Attribute("The session's transport (for an abort at the end of a drain)")

    def goodbye(reason: str) -> None:
        """End the session the way its protocol says goodbye (SMTP ``421 4.3.2``, IMAP
        ``* BYE``, POP3 a close without UPDATE) and close the connection."""


class ISessionObserver(Interface):
    """Hears what every session of one mail host does (metrics)."""

    def session_opened(session: ISession) -> None:
        """A connection was accepted and its session started."""

    def session_closed(session: ISession) -> None:
        """The session's connection is gone."""

    def command_started(session: ISession, verb: str) -> None:
        """A command begins to run. ``verb`` is the upper-case command name; SMTP adds
        ``DATA-END`` (final dot to final reply) and ``BDAT-LAST``."""

    def command_finished(session: ISession, verb: str, status: str, octets: int) -> None:
        """The command's final reply is going out. ``status`` is the SMTP reply code
        (``"250"``), POP3 ``"+OK"``/``"-ERR"`` or IMAP ``"OK"``/``"NO"``/``"BAD"``;
        ``octets`` the message size an SMTP ``DATA-END``/``BDAT-LAST`` accepted, else 0."""


class IDispatchHook(Interface):
    """Decides, before a session runs a command, whether it runs (fault injection)."""

    def dispatch(session: ISession, verb: str, line: str) -> Any:
        """``None`` to run the command, a ``Refuse``, ``CUT``, or a Deferred firing with
        one of those later (the session reads nothing more meanwhile). ``verb`` is the
        upper-case command (IMAP ``UID FETCH`` for a UID command; ``GREETING`` for the
        greeting), ``line`` the command's first line as text."""


@dataclass(frozen=True)
class Refuse:
    """Answer the command with an error instead of running it: SMTP ``code text``,
    POP3 ``-ERR text``, IMAP ``<tag> NO text``; a refused greeting closes."""

    code: int | None
    text: str


@dataclass(frozen=True)
class Cut:
    """Run the command, then cut the connection before its outcome reaches the client
    (SMTP DATA/BDAT: once the message is in, before it is committed)."""


CUT = Cut()


class SessionRegistry:
    """Every live session of one mail host, its observers and dispatch hook, and drain."""

    def __init__(self, reactor: Any = None, hook: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.hook = hook
        self.sessions: set[Any] = set()
        self.observers: list[Any] = []
        self.draining = False
        self._drained: defer.Deferred[None] | None = None
        self._empty: list[defer.Deferred[None]] = []

    # -- what sessions report -----------------------------------------------------

    def opened(self, session: Any) -> None:
        self.sessions.add(session)
        for observer in self.observers:
            observer.session_opened(session)

    def closed(self, session: Any) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        for observer in self.observers:
            observer.session_closed(session)
        if not self.sessions:
            waiters, self._empty = self._empty, []
            for d in waiters:
                d.callback(None)
            if self._drained is not None and not self._drained.called:
                self._drained.callback(None)

    def before_command(self, session: Any, verb: str, line: str) -> Any:
        """Called by a session before it runs a command; see ``IDispatchHook``.

        While draining, a session that is idle is told goodbye instead (the session
        sees itself closed and runs nothing)."""
        if self.draining and not session.busy:
            session.goodbye("Server shutting down")
            return None
        if self.hook is None:
            return None
        return self.hook.dispatch(session, verb, line)

    def started(self, session: Any, verb: str) -> None:
        for observer in self.observers:
            observer.command_started(session, verb)

    def finished(self, session: Any, verb: str, status: str, octets: int = 0) -> None:
        for observer in self.observers:
            observer.command_finished(session, verb, status, octets)
        if self.draining:
            # After the reply has been written (it follows this call).
            self.reactor.callLater(0, self._goodbye_if_idle, session)

    def _goodbye_if_idle(self, session: Any) -> None:
        if session in self.sessions and not session.busy:
            session.goodbye("Server shutting down")

    # -- shutdown and tests ---------------------------------------------------------

    def drain(self, grace: float) -> defer.Deferred[None]:
        """Say goodbye to idle sessions now and to busy ones when their work is done;
        abort whatever is still open after ``grace`` seconds. Fires when all are gone."""
        self.draining = True
        self._drained = defer.Deferred()
        for session in list(self.sessions):
            if not session.busy:
                session.goodbye("Server shutting down")
        if not self.sessions:
            self._drained.callback(None)
            return self._drained

        def abort() -> None:
            left = list(self.sessions)
            if left:
                kinds = sorted({str(session.protocol) for session in left})
                log.warn("shutdown: {count} sessions still open after the {grace:g} s grace "
                         "({kinds}); cutting them", count=len(left), grace=grace,
                         kinds=", ".join(kinds), event="drain_timeout")
            for session in left:
                session.transport.abortConnection()
            if self._drained is not None and not self._drained.called:
                self._drained.callback(None)

        timer = self.reactor.callLater(grace, abort)
        self._drained.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return self._drained

    def abort_all(self) -> defer.Deferred[None]:
        """Abort every open connection; fires once all of them are gone (test resets)."""
        if not self.sessions:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._empty.append(d)
        for session in list(self.sessions):
            session.transport.abortConnection()
        return d
