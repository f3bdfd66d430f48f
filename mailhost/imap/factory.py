"""The IMAP listener's factory: one ``IMAPServer`` per connection, a connection cap."""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import ServerFactory

from mailhost.auth.login import LoginService
from mailhost.imap.headerindex import HeaderTables
from mailhost.imap.server import IMAPServer
from mailhost.sessions import SessionRegistry
from mailhost.settings import IMAPSettings


class IMAPFactory(ServerFactory):
    """Builds IMAP sessions sharing one login service and TLS context.

    A session runs under the ``settings`` the factory had when it started; a reload
    replaces ``settings`` with a new frozen object for the sessions after it.

    Sessions reach the store only through the logged-in user's ``IMailAccount``
    (folders and APPEND), so the factory holds no store; URLFETCH of another user's
    URL goes through ``url_fetcher`` when service.py gives one.
    """

    protocol = IMAPServer

    def __init__(self, settings: IMAPSettings, login: LoginService, tls_options: Any = None,
                 reactor: Any = None, sessions: SessionRegistry | None = None,
                 url_fetcher: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.settings = settings
        self.login = login
        self.tls_options = tls_options
        self.reactor = reactor
        self.sessions: set[IMAPServer] = set()
        # The host's registry (service.py passes one to every listener's factory).
        self.registry = sessions if sessions is not None else SessionRegistry(reactor)
        #: SORT/THREAD/SEARCH header fields per folder, shared by the sessions.
        self.header_tables = HeaderTables()
        #: URLFETCH's ``mailhost.urlfetch.IUrlFetcher`` over the whole store (service.py);
        #: None: a session's URLFETCH reaches its own account only (mailhost.imap.urlauth).
        self.url_fetcher = url_fetcher

    def buildProtocol(self, addr: Any) -> IMAPServer:
        p = IMAPServer(self)
        p.factory = self
        return p

    def connection_opened(self, session: IMAPServer) -> bool:
        """Track the session. Connection limits live in mailhost.limits, in front of
        this factory, for every protocol alike."""
        self.sessions.add(session)
        return True

    def connection_closed(self, session: IMAPServer) -> None:
        self.sessions.discard(session)
