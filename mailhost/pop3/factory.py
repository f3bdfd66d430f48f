"""The POP3 listener's factory: settings, login service, TLS and the shared maildrop locks.

One factory may serve several endpoints (``pop3.listen`` and ``pop3.listen_tls``);
sessions on an implicit-TLS endpoint see a TLS transport and are not offered STLS.
Factories built separately for each endpoint must share ``locks``, or two sessions
could hold one maildrop.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import ServerFactory

from mailhost.auth.login import LoginService
from mailhost.pop3.lock import MaildropLocks
from mailhost.pop3.server import POP3Server
from mailhost.sessions import SessionRegistry
from mailhost.settings import POP3Settings


class POP3Factory(ServerFactory):
    """Builds a ``POP3Server`` per connection.

    Connection limits (``pop3.max_connections`` and per address) are enforced in front
    of this factory by ``mailhost.limits``, as for every listener. A session runs under
    the ``settings`` the factory had when it started; a reload replaces ``settings``
    with a new frozen object for the sessions after it.
    """

    def __init__(self, settings: POP3Settings, login: LoginService, tls_options: Any = None,
                 reactor: Any = None, locks: MaildropLocks | None = None,
                 sessions: SessionRegistry | None = None) -> None:
        self.settings = settings
        self.login = login
        self.tls_options = tls_options
        self.reactor = reactor
        self.locks = locks if locks is not None else MaildropLocks()
        self.sessions: set[POP3Server] = set()
        # The host's registry (service.py passes one to every listener's factory).
        self.registry = sessions if sessions is not None else SessionRegistry(reactor)

    def buildProtocol(self, addr: Any) -> POP3Server:
        pop3 = self.settings
        session = POP3Server(
            self.login, self.locks, pop3.delete, pop3.timeout, tls_options=self.tls_options,
            reactor=self.reactor, on_close=self.sessions.discard,
            handshake_timeout=pop3.handshake_timeout,
            preauth_timeout=pop3.preauth_timeout, registry=self.registry,
        )
        session.factory = self
        self.sessions.add(session)
        return session
