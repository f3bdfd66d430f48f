"""Prometheus metrics, gathered without touching protocol code.

Two sources feed one registry:
- the structured log events every part already emits (``smtp.transaction``,
  ``login``, delivery attempts, session ends), read by a log observer, so a metric
  can never disagree with the log;
- a protocol-agnostic wrapper in front of each listener that counts connections and
  times each command from its line to its final reply (SMTP ``NNN``, POP3 ``+OK``/
  ``-ERR``, IMAP tagged response), skipping SMTP message bodies and IMAP literals.

The registry is per ``Metrics`` object, so two mail hosts in one process (tests)
never share counters. ``prometheus_client`` is optional: only ``metrics.listen``
needs it.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import ILogObserver
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

from mailhost.config import ConfigError

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SMTP_FINAL = re.compile(rb"^(\d{3})(?: |\r?$)")
_LITERAL = re.compile(rb"\{(\d+)\+?\}\r?\n?$")


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigError(
            "metrics.listen: needs the prometheus_client package "
            "(pip install 'mailhost[metrics]')") from None
    return prometheus_client


QueueStats = Callable[[], tuple[int, float]]


@implementer(ILogObserver)
class Metrics:
    """The registry plus its two feeds (``observe`` and ``wrap``)."""

    def __init__(self, queue_stats: QueueStats | None = None) -> None:
        prom = _prometheus()
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.connections = prom.Counter(
            "mailhost_connections", "Accepted connections", ["protocol"], registry=r)
        self.active = prom.Gauge(
            "mailhost_connections_active", "Open connections", ["protocol"], registry=r)
        self.messages = prom.Counter(
            "mailhost_smtp_messages", "SMTP transactions by result and reply code",
            ["protocol", "result", "code"], registry=r)
        self.recipients = prom.Counter(
            "mailhost_smtp_recipients", "RCPT decisions by reply code", ["code"], registry=r)
        self.received_bytes = prom.Counter(
            "mailhost_smtp_received_bytes", "Message octets accepted", registry=r)
        self.logins = prom.Counter(
            "mailhost_logins", "Login attempts", ["protocol", "outcome"], registry=r)
        self.deliveries = prom.Counter(
            "mailhost_delivery_attempts", "Outbound delivery attempts per recipient",
            ["result"], registry=r)
        self.sessions = prom.Counter(
            "mailhost_sessions_ended", "POP3/IMAP sessions ended", ["protocol"], registry=r)
        self.latency = prom.Histogram(
            "mailhost_command_duration_seconds", "Time from command line to final reply",
            ["protocol", "command"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_size = prom.Gauge(
            "mailhost_queue_messages", "Messages in the outbound queue", registry=r)
        self.queue_oldest = prom.Gauge(
            "mailhost_queue_oldest_age_seconds", "Age of the oldest queued message", registry=r)
        self._queue_stats = queue_stats
        if queue_stats is not None:
            self.queue_size.set_function(lambda: queue_stats()[0])
            self.queue_oldest.set_function(lambda: queue_stats()[1])

    # -- log events -> counters ---------------------------------------------------
    def __call__(self, event: dict) -> None:
        name = event.get("event")
        if not name:
            return
        try:
            self._count(name, event)
        except Exception:  # noqa: BLE001 - a metric must never break logging
            pass

    def _count(self, name: str, event: dict) -> None:
        if name == "smtp.transaction":
            outcome = str(event.get("outcome") or "")
            code = outcome[:3] if outcome[:3].isdigit() else "none"
            result = ("accepted" if code.startswith("2") else
                      "aborted" if code == "none" else "rejected")
            proto = "submission" if event.get("submission") else "smtp"
            self.messages.labels(proto, result, code).inc()
            if result == "accepted" and event.get("size"):
                self.received_bytes.inc(event["size"])
            for item in event.get("recipients") or ():
                reply = str(item[1] if isinstance(item, list | tuple) and len(item) > 1 else "")
                self.recipients.labels(reply[:3] if reply[:3].isdigit() else "none").inc()
        elif name == "login":
            self.logins.labels(str(event.get("protocol")), str(event.get("outcome"))).inc()
        elif name in ("pop3_session_end", "imap_session_end"):
            self.sessions.labels(name.split("_", 1)[0]).inc()
        elif name in ("outbound.attempt", "delivery_attempt"):
            results = event.get("results") or event.get("recipients") or {}
            items = results.values() if isinstance(results, dict) else results
            counted = False
            for item in items:
                status = item.get("status") if isinstance(item, dict) else item
                self.deliveries.labels(_delivery_result(status)).inc()
                counted = True
            if not counted:
                self.deliveries.labels(str(event.get("result", "unknown"))).inc()

    # -- listeners ----------------------------------------------------------------
    def wrap(self, kind: str, factory: IProtocolFactory) -> IProtocolFactory:
        return _MeteredFactory(factory, kind, self)

    def resource(self) -> Any:
        """A twisted.web resource tree serving ``/metrics``."""
        from prometheus_client.twisted import MetricsResource
        from twisted.web.resource import Resource

        root = Resource()
        root.putChild(b"metrics", MetricsResource(registry=self.registry))
        return root


def _delivery_result(status: Any) -> str:
    text = str(status or "unknown").lower()
    for word in ("delivered", "deferred", "bounced", "failed", "pending"):
        if word in text:
            return word
    if text[:1] == "2":
        return "delivered"
    if text[:1] == "4":
        return "deferred"
    if text[:1] == "5":
        return "failed"
    return text[:20]


class _MeteredProtocol(ProtocolWrapper):
    """Counts the connection and times each command to its final reply."""

    def __init__(self, factory: _MeteredFactory, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self.kind = factory.kind
        self.metrics = factory.metrics
        self.pending: deque[tuple[str, str, float]] = deque(maxlen=256)
        self.inbuf = b""
        self.in_data = False  # SMTP: between 354 and the final dot
        self.skip = 0  # IMAP: literal octets still to pass
        self.await_data = False

    def connectionMade(self) -> None:  # noqa: N802
        self.metrics.connections.labels(self.kind).inc()
        self.metrics.active.labels(self.kind).inc()
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.metrics.active.labels(self.kind).dec()
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        try:
            self._scan_input(data)
        except Exception:  # noqa: BLE001 - metering must never break a session
            self.inbuf = b""
        super().dataReceived(data)

    def _scan_input(self, data: bytes) -> None:
        if self.in_data:
            buf = self.inbuf[-4:] + data
            end = buf.find(b"\r\n.\r\n")
            if end < 0:
                self.inbuf = buf[-4:]
                return
            self.in_data = False
            self.pending.append(("", "DATA-END", time.monotonic()))
            data = buf[end + 5:]
            self.inbuf = b""
        buf = self.inbuf + data
        while buf:
            if self.skip:
                n = min(self.skip, len(buf))
                self.skip -= n
                buf = buf[n:]
                continue
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl + 1], buf[nl + 1:]
            self._command(line)
            if self.in_data:
                self.inbuf = b""
                self._scan_input(buf)
                return
        self.inbuf = buf[-8192:]

    def _command(self, line: bytes) -> None:
        words = line.strip().split(None, 3)
        if self.kind == "imap":
            lit = _LITERAL.search(line)
            if lit:
                self.skip = int(lit.group(1))
            if len(words) >= 2 and not self.skip_continuation(words):
                verb = words[1].upper()
                if verb == b"UID" and len(words) >= 3:
                    verb = b"UID " + words[2].upper()
                self.pending.append((words[0].decode("ascii", "replace"),
                                     verb.decode("ascii", "replace")[:20], time.monotonic()))
            return
        if not words:
            return
        verb = words[0].upper().decode("ascii", "replace")[:12]
        if not verb.isalpha():
            return
        self.pending.append(("", verb, time.monotonic()))
        if self.kind in ("smtp", "submission") and verb in ("DATA",):
            self.await_data = True

    def skip_continuation(self, words: list[bytes]) -> bool:
        return words[0] in (b"DONE", b"*")

    def write(self, data: bytes) -> None:
        if self.pending:
            try:
                self._scan_output(data)
            except Exception:  # noqa: BLE001
                self.pending.clear()
        super().write(data)

    def writeSequence(self, data: list[bytes]) -> None:  # noqa: N802
        self.write(b"".join(data))

    def _scan_output(self, data: bytes) -> None:
        for line in data.split(b"\n")[:64]:
            if not self.pending:
                return
            if self.kind == "imap":
                tag = line.split(b" ", 1)[0].decode("ascii", "replace")
                for i, (t, verb, start) in enumerate(self.pending):
                    if t == tag and tag not in ("*", "+"):
                        del self.pending[i]
                        self._observe(verb, start)
                        break
            elif self.kind == "pop3":
                if line.startswith((b"+OK", b"-ERR")):
                    _, verb, start = self.pending.popleft()
                    self._observe(verb, start)
            else:
                m = _SMTP_FINAL.match(line)
                if m:
                    _, verb, start = self.pending.popleft()
                    self._observe(verb, start)
                    if verb == "DATA" and m.group(1) == b"354":
                        self.in_data = True

    def _observe(self, verb: str, start: float) -> None:
        self.metrics.latency.labels(self.kind, verb).observe(time.monotonic() - start)


class _MeteredFactory(WrappingFactory):
    protocol = _MeteredProtocol
    noisy = False

    def __init__(self, wrapped: IProtocolFactory, kind: str, metrics: Metrics) -> None:
        super().__init__(wrapped)
        self.kind = kind
        self.metrics = metrics

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)
