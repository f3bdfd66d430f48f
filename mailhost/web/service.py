"""``WebService``: the web UI's part of the host's lifetime.

The composition root (``mailhost.service``) binds the listener itself (so the port is
reported with the others by ``wait_listening``) and serves ``factory``; this service
starts the live-event feed with the host and, on stop, ends the event streams and
closes the connections still open (a browser keeps them alive), so a stopped host
leaves nothing behind in the reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.protocols.policies import WrappingFactory
from twisted.web.server import Site

from mailhost.mailview import IMailView
from mailhost.web.api import Api
from mailhost.web.events import EventStreams
from mailhost.web.interfaces import IFaultControl, IQueueListing
from mailhost.web.resource import WebRoot
from mailhost.web.settings import WebSettings


class _QuietSite(Site):
    """A ``Site`` without the per-request access log (the event stream would flood it)."""

    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        pass


class WebService(service.Service):
    """The web UI and REST API over a mail view; ``factory`` is what to listen with."""

    def __init__(self, settings: WebSettings, view: IMailView, reactor: Any,
                 queue: IQueueListing | None = None,
                 faults: IFaultControl | None = None) -> None:
        self.setName("web")
        self.settings = settings
        self.events = EventStreams(view, reactor)
        self.api = Api(view, self.events, reactor, queue=queue, faults=faults)
        self.factory = WrappingFactory(_QuietSite(WebRoot(self.api, settings)))

    def startService(self) -> None:
        super().startService()
        self.events.start()

    def stopService(self) -> None:
        super().stopService()
        self.events.stop()
        for protocol in list(self.factory.protocols):
            # After what was written (the streams' last chunk) is sent; stopService
            # does not wait for it, so a client that reads nothing holds up nothing.
            protocol.transport.loseConnection()
