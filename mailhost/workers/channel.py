"""The worker's end of its pipe pair to the supervisor: one JSON array per line.

A worker ``publish``es what the other workers must know (a failed login, a counted
connection, a new spool file); the supervisor hands it to every other worker as
``[kind, source worker, *args]``, and the handler registered for ``kind`` runs.
Lines rather than AMP: the messages are fire-and-forget facts, none waits for an
answer, and a line of JSON is all the framing they need.

When the supervisor goes away (killed), the pipe closes and the worker stops
gracefully: no orphan keeps serving without a supervisor to restart it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

log = Logger()


class WorkerChannel(LineReceiver):
    """Publish facts to the other workers; run a handler for each fact they publish."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, on_lost: Callable[[], Any] | None = None) -> None:
        self.handlers: dict[str, Callable[..., None]] = {}
        self.on_lost = on_lost
        self.connected_to_supervisor = False

    def on(self, kind: str, handler: Callable[..., None]) -> None:
        """Run ``handler(source_worker, *args)`` for each ``kind`` another worker sends."""
        self.handlers[kind] = handler

    def publish(self, kind: str, *args: Any) -> None:
        if self.transport is not None and self.connected_to_supervisor:
            self.sendLine(json.dumps([kind, *args], separators=(",", ":")).encode())

    def connectionMade(self) -> None:  # noqa: N802 (Twisted hook)
        self.connected_to_supervisor = True

    def lineReceived(self, line: bytes) -> None:  # noqa: N802 (Twisted hook)
        try:
            kind, source, *args = json.loads(line)
        except ValueError:
            log.warn("worker channel: unreadable line {line!r}", line=line[:200])
            return
        handler = self.handlers.get(kind)
        if handler is None:
            return
        try:
            handler(source, *args)
        except Exception:
            log.failure("worker channel: handling {kind}", kind=kind)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 (Twisted hook)
        self.connected_to_supervisor = False
        if self.on_lost is not None:
            self.on_lost()
