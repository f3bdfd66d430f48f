"""Prometheus metrics, gathered without touching protocol code.

Two sources feed one registry:
- the structured log events every part already emits (``smtp.transaction``,
  ``login``, delivery attempts, session ends), read by a log observer, so a metric
  can never disagree with the log;
- the ``SessionTracker`` in front of each listener (mailhost.sessions), which counts
  connections and times each command from its line to its final reply.

The registry is per ``Metrics`` object, so two mail hosts in one process (tests)
never share counters. ``prometheus_client`` is optional: only ``metrics.listen``
needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import ILogObserver
from zope.interface import implementer

from mailhost.config import ConfigError

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


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
        elif name == "outbound_attempt":
            # recipients: ["addr=kind:reply", ...], kind delivered/temporary/permanent
            for item in event.get("recipients") or ():
                kind = str(item).rpartition("=")[2].partition(":")[0] or "unknown"
                self.deliveries.labels(kind).inc()

    # -- listeners ----------------------------------------------------------------
    def attach(self, tracker: Any) -> None:
        """Take connection counts and command latencies from a SessionTracker."""
        tracker.command_observers.append(
            lambda kind, verb, seconds: self.latency.labels(kind, verb).observe(seconds))
        tracker.connection_observers.append(self._connection)

    def _connection(self, kind: str, delta: int) -> None:
        if delta > 0:
            self.connections.labels(kind).inc()
        self.active.labels(kind).inc(delta)

    def resource(self) -> Any:
        """A twisted.web resource tree serving ``/metrics``."""
        from prometheus_client.twisted import MetricsResource
        from twisted.web.resource import Resource

        root = Resource()
        root.putChild(b"metrics", MetricsResource(registry=self.registry))
        return root
