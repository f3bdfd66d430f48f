"""The SMTP listener factory: shared collaborators and the sessions of one listener.

One factory per listener. ``submission=True`` gives the 587/465 behaviour (AUTH
before MAIL, sender ownership). Connection limits (overall, per address, rate) are
not counted here: ``mailhost.limits`` does that for every protocol in one place, in
front of this factory, and greets a client over a limit with ``421 4.3.2``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import ServerFactory

from mailhost.message.checks import EnvelopeChecks
from mailhost.message.stage import Pipeline
from mailhost.sessions import SessionRegistry
from mailhost.settings import SMTPSettings
from mailhost.smtp.policy import RecipientPolicy
from mailhost.smtp.reply import Reply
from mailhost.smtp.server import SMTPServer

#: Distinct HELO/EHLO replies a factory keeps.
_MAX_REPLIES = 64


class SMTPFactory(ServerFactory):
    """Builds ``SMTPServer`` sessions for one listener (inbound or submission).

    Every collaborator is given: the recipient ``policy`` decides RCPT (its
    ``can_queue`` says whether mail for remote domains may go to ``queue``). A
    session runs under the ``settings`` the factory had when it started; a reload
    replaces ``settings`` with a new frozen object for the sessions after it.
    """

    protocol = SMTPServer

    def __init__(self, settings: SMTPSettings, store: Any, directory: Any, login: Any,
                 policy: RecipientPolicy, queue: Any | None = None, submission: bool = False,
                 tls_options: Any | None = None, reactor: Any = None,
                 sessions: SessionRegistry | None = None,
                 space: Any | None = None, pipeline: Pipeline | None = None,
                 checks: EnvelopeChecks | None = None, url_fetcher: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.settings = settings
        self.store = store
        self.directory = directory
        self.login = login
        self.queue = queue
        self.submission = submission
        self.tls_options = tls_options
        self.reactor = reactor
        # The message pipeline's stages (service.py builds them from [pipeline]).
        self.pipeline = pipeline if pipeline is not None else Pipeline(())
        # The envelope checks at connect, MAIL and RCPT (service.py: mailhost.abuse).
        self.checks = checks if checks is not None else EnvelopeChecks(())
        # The host's registry (service.py passes one to every listener's factory).
        self.registry = sessions if sessions is not None else SessionRegistry(reactor)
        self.policy = policy
        #: BURL's ``mailhost.urlfetch.IUrlFetcher`` (submission with IMAP URLAUTH), or None.
        self.url_fetcher = url_fetcher
        # mailhost.diskspace.FreeSpace: 452 4.3.1 at MAIL/RCPT on a full disk; None = no check
        self.space = space
        self.sessions: set[SMTPServer] = set()
        # Set by the service on shutdown: new sessions are told to come back later.
        self.draining = False
        self._greeting: tuple[str, Reply] | None = None
        # HELO/EHLO replies by their content (a few per listener), see ``reply``.
        self._replies: dict[tuple[Any, ...], Reply] = {}

    def greeting(self, hostname: str) -> Reply:
        """The ``220`` for ``hostname``, made once per name rather than per connection
        (its wire form too: issue 18)."""
        if self._greeting is None or self._greeting[0] != hostname:
            self._greeting = (hostname, Reply(220, "", f"{hostname} ESMTP mailhost"))
        return self._greeting[1]

    def reply(self, code: int, lines: tuple[str, ...]) -> Reply:
        """The reply ``code`` with ``lines`` (no enhanced status), made once per
        content: HELO and EHLO answer every session alike, and a Reply keeps its wire
        form (issue 18: the EHLO reply's eight lines were cleaned and encoded anew
        for every session)."""
        key = (code, lines)
        reply = self._replies.get(key)
        if reply is None:
            if len(self._replies) >= _MAX_REPLIES:  # (a reload changed the hostname...)
                self._replies.clear()
            reply = self._replies[key] = Reply(code, "", list(lines))
        return reply

    def buildProtocol(self, addr: Any) -> SMTPServer:  # noqa: N802
        proto = self.protocol(self)
        return proto

    def admit(self, proto: SMTPServer) -> Reply | None:
        """Register a new session, or return the 421 it must be greeted with."""
        host = self.settings.hostname
        if self.draining:
            return Reply(421, "4.3.2", f"{host} Service shutting down, try again later")
        self.sessions.add(proto)
        return None

    def release(self, proto: SMTPServer) -> None:
        self.sessions.discard(proto)
