"""The worker's end of its pipe pair to the supervisor: one JSON array per line.

A worker ``publish``es what the other workers must know (a failed login, a new spool
file); the supervisor hands it to every other worker as ``[kind, source worker,
*args]``, and the handler registered for ``kind`` runs. Lines rather than AMP: the
messages are fire-and-forget facts, none waits for an answer, and a line of JSON is
all the framing they need.

**Batched.** Every connection a worker opens or closes is such a fact, and each one
reaches N - 1 other workers: sent one line and one write each, the relay's cost grew
with connection rate x N. Facts are therefore held and written together, at once when
the channel has been quiet for ``BATCH_SECONDS`` (no added delay at a low rate) and
otherwise at most ``BATCH_SECONDS`` after the previous batch; the supervisor relays a
batch as one write to each other worker. Counted facts (``tally``: a connection opened
or closed, per protocol and client address) are summed within a batch into one row
per key, so a burst of connections from one client costs one line, not hundreds. The
price is that another worker may learn of a connection up to ``BATCH_SECONDS`` late;
limits are then briefly over by what arrived in that window.

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

#: At most this long between a fact and its batch going out (while facts keep coming).
BATCH_SECONDS = 0.01


def _encode(fact: list[Any]) -> bytes:
    return json.dumps(fact, separators=(",", ":")).encode()


class WorkerChannel(LineReceiver):
    """Publish facts to the other workers; run a handler for each fact they publish."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, on_lost: Callable[[], Any] | None = None, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.handlers: dict[str, Callable[..., None]] = {}
        self.on_lost = on_lost
        self.connected_to_supervisor = False
        self._lines: list[bytes] = []  # this batch's facts, in order
        # this batch's counted facts: kind -> key -> one count per column
        self._tallies: dict[str, dict[tuple[Any, ...], list[int]]] = {}
        self._flush_call: Any = None
        self._last_flush = float("-inf")

    def on(self, kind: str, handler: Callable[..., None]) -> None:
        """Run ``handler(source_worker, *args)`` for each ``kind`` another worker sends."""
        self.handlers[kind] = handler

    def publish(self, kind: str, *args: Any) -> None:
        """Send ``[kind, *args]`` to the other workers with this batch."""
        if self.transport is not None and self.connected_to_supervisor:
            self._lines.append(_encode([kind, *args]))
            self._schedule()

    def tally(self, kind: str, key: tuple[Any, ...], column: int, columns: int) -> None:
        """Count one fact in ``column`` of ``key``'s row (of ``columns``) for this batch.

        The batch carries ``[kind, [[*key, *counts], ...]]``, one row per key, after
        the batch's ``publish``ed lines; the handler gets the rows. Only the sum of a
        batch is kept, so a kind whose columns must apply in an order (opens before
        closes) is applied so by its handler."""
        if self.transport is None or not self.connected_to_supervisor:
            return
        rows = self._tallies.setdefault(kind, {})
        row = rows.get(key)
        if row is None:
            row = rows[key] = [0] * columns
        row[column] += 1
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_call is None:
            delay = max(0.0, self._last_flush + BATCH_SECONDS - self.reactor.seconds())
            self._flush_call = self.reactor.callLater(delay, self.flush)

    def flush(self) -> None:
        """Write the batch now, in one write."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._last_flush = self.reactor.seconds()
        lines, self._lines = self._lines, []
        for kind, rows in self._tallies.items():
            lines.append(_encode([kind, [[*key, *counts] for key, counts in rows.items()]]))
        self._tallies = {}
        if lines and self.transport is not None and self.connected_to_supervisor:
            lines.append(b"")
            self.transport.write(b"\n".join(lines))

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
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._lines, self._tallies = [], {}
        if self.on_lost is not None:
            self.on_lost()
