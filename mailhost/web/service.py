"""``WebService``: the web UI's part of the host's lifetime.

The composition root (``mailhost.service``) binds the listener itself (so the port is
reported with the others by ``wait_listening``) and serves ``factory``; this service
starts the live-event feed with the host and, on stop, ends the event streams and
closes the connections still open (a browser keeps them alive), and its stop fires
only once they are gone, so a stopped host leaves nothing behind in the reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.protocols.policies import WrappingFactory
from twisted.web.server import Site

from mailhost.mailview import IMailView
from mailhost.web.api import Api
from mailhost.web.events import EventStreams
from mailhost.web.interfaces import IFaultControl, IQueueListing
from mailhost.web.resource import WebRoot
from mailhost.web.settings import WebSettings

#: Seconds a closing connection may take to send what it was written before it is cut.
CLOSE_GRACE = 2.0


class _QuietSite(Site):
    """A ``Site`` without the per-request access log (the event stream would flood it)."""

    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        pass


class _Connections(WrappingFactory):
    """The site's factory, knowing its open connections and when the last one closed."""

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._waiters: list[defer.Deferred[None]] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def all_closed(self) -> defer.Deferred[None]:
        if not self.protocols:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d


class WebService(service.Service):
    """The web UI and REST API over a mail view; ``factory`` is what to listen with."""

    def __init__(self, settings: WebSettings, view: IMailView, reactor: Any,
                 queue: IQueueListing | None = None,
                 faults: IFaultControl | None = None) -> None:
        self.setName("web")
        self.settings = settings
        self.events = EventStreams(view, reactor)
        self.api = Api(view, self.events, reactor, queue=queue, faults=faults)
        self.reactor = reactor
        self.factory = _Connections(_QuietSite(WebRoot(self.api, settings)))

    def startService(self) -> None:
        super().startService()
        self.events.start()

    def stopService(self) -> defer.Deferred[None]:
        """Ends the streams, closes every connection once what was written is sent,
        and fires when they are all gone; a client that reads nothing is cut after
        ``CLOSE_GRACE`` seconds, so a stop never hangs on one."""
        super().stopService()
        self.events.stop()
        for protocol in list(self.factory.protocols):
            protocol.transport.loseConnection()
        closed = self.factory.all_closed()
        if closed.called:
            return closed

        def cut() -> None:
            for protocol in list(self.factory.protocols):
                protocol.transport.abortConnection()

        timer = self.reactor.callLater(CLOSE_GRACE, cut)
        return closed.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
