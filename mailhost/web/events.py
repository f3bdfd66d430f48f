"""Live updates: one server-sent event stream per open page (``/api/events``).

The mail view tells us of each stored message (``IMailView.subscribe``); the API tells
us of deletes it made. Each event goes to every open stream as ``event:``/``data:``
lines (``text/event-stream``); a comment line every ``heartbeat`` seconds keeps idle
proxies and the browser's reconnect logic honest. Streams end when the web UI stops.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.server import Request

from mailhost.mailview import IMailView, MessageSummary
from mailhost.web.shapes import summary_json

log = Logger()


class EventStreams:
    """Every open ``/api/events`` response; ``start``/``stop`` with the web service."""

    def __init__(self, view: IMailView, reactor: Any, heartbeat: float = 15.0) -> None:
        self.view = view
        self.reactor = reactor
        self.heartbeat = heartbeat
        self.streams: set[Request] = set()
        self._serial = 0
        self._unsubscribe: Callable[[], None] | None = None
        self._beat: LoopingCall | None = None

    def start(self) -> None:
        self._unsubscribe = self.view.subscribe(self._stored)
        self._beat = LoopingCall(self._comment)
        self._beat.clock = self.reactor
        self._beat.start(self.heartbeat, now=False)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        self._beat = None
        for request in list(self.streams):
            self.streams.discard(request)
            request.finish()

    def open(self, request: Request) -> None:
        """Turn ``request`` into an event stream (the caller returns NOT_DONE_YET)."""
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        self.streams.add(request)
        request.notifyFinish().addBoth(lambda _: self.streams.discard(request))
        # The reconnect delay, and a first line so the client sees the stream open.
        request.write(b"retry: 1000\n: open\n\n")

    def publish(self, event: str, data: Any) -> None:
        self._serial += 1
        chunk = (f"id: {self._serial}\nevent: {event}\n"
                 f"data: {json.dumps(data, separators=(',', ':'))}\n\n").encode()
        for request in list(self.streams):
            request.write(chunk)

    def _stored(self, summary: MessageSummary) -> None:
        try:
            self.publish("message", summary_json(summary))
        except Exception:
            log.failure("publishing a stored message failed")

    def _comment(self) -> None:
        for request in list(self.streams):
            request.write(b": keep-alive\n\n")
