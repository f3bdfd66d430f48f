"""Under trial, a host with the web UI stops clean: an event stream still open and a
kept-alive API connection at the end of the test leave no dirty reactor."""

from __future__ import annotations

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest

from mailhost.testing.trial import MailHostTestMixin


class _Client(protocol.Protocol):
    """Sends one HTTP/1.1 request, collects what comes back, and stays connected."""

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.received = b""
        self.got_data: defer.Deferred[None] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(b"GET " + self.path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data
        if not self.got_data.called and b"\r\n\r\n" in self.received:
            self.got_data.callback(None)

    def connectionLost(self, reason: object = None) -> None:  # noqa: N802
        self.closed.callback(None)


class WebUnderTrial(MailHostTestMixin, unittest.TestCase):
    mailhost_trial = True
    mailhost_options = {"web": True, "users": {"alice@example.test": "pw"}}
    timeout = 30

    @defer.inlineCallbacks
    def test_open_stream_and_kept_alive_connection_are_closed_by_stop(self):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.mailhost.web_port)
        api = yield connectProtocol(endpoint, _Client(b"/api/mailboxes"))
        stream = yield connectProtocol(endpoint, _Client(b"/api/events"))
        yield api.got_data
        yield stream.got_data
        self.assertIn(b"alice@example.test", api.received)
        self.assertIn(b"text/event-stream", stream.received)
        self.assertFalse(api.closed.called or stream.closed.called)
        yield self.mailhost.stop()
        # Stopped means closed on the server's side; the client hears of it at once
        # (bounded here, so a regression fails instead of hanging).
        closed = defer.gatherResults([api.closed, stream.closed])
        closed.addTimeout(5, reactor)
        yield closed
