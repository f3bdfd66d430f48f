"""Prometheus metrics of one mail host, from what its own parts report.

- Every session (SMTP, POP3, IMAP) reports itself to the host's ``SessionRegistry``
  (``mailhost.sessions``); ``Metrics`` is an ``ISessionObserver`` there: connections,
  command latencies, SMTP messages and recipients by reply code, octets received and
  POP3/IMAP sessions ended all come from those events.
- The host's ``LoginService`` and outbound scheduler call ``login`` and ``attempt``.

Nothing is read from the global log publisher, so two mail hosts in one process
(tests, embedders) never count each other's traffic: the registry and every feed are
per host. ``prometheus_client`` is optional: only ``metrics.listen`` needs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from zope.interface import implementer

from mailhost.config import ConfigError
from mailhost.sessions import ISessionObserver

#: SMTP commands that end a transaction without a message (counted as aborted).
_TRANSACTION_ENDERS = frozenset({"RSET", "HELO", "EHLO", "STARTTLS", "QUIT"})

#: From 0.1 ms: an IMAP command answered from memory (NOOP, FETCH FLAGS, STORE) takes
#: 0.1-0.3 ms, and buckets from 1 ms put them all in the first one.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigError(
            "metrics.listen: needs the prometheus_client package "
            "(pip install 'mailhost[metrics]')") from None
    return prometheus_client


QueueStats = Callable[[], tuple[int, float]]
QueueHeld = Callable[[], int]


@implementer(ISessionObserver)
class Metrics:
    """The registry of one mail host and its feeds.

    Implements: ISessionObserver (add it to the host's ``SessionRegistry.observers``).
    """

    def __init__(self, queue_stats: QueueStats | None = None,
                 queue_held: QueueHeld | None = None) -> None:
        prom = _prometheus()
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.connections = prom.Counter(
            "mailhost_connections", "Accepted connections", ["protocol"], registry=r)
        self.active = prom.Gauge(
            "mailhost_connections_active", "Open connections", ["protocol"], registry=r)
        self.messages = prom.Counter(
            "mailhost_smtp_messages", "SMTP messages by result and final reply code",
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
        self.tls_results = prom.Counter(
            "mailhost_outbound_tls_results", "Outbound TLS sessions by recipient domain, "
            "policy (sts, tlsa, no-policy-found) and RFC 8460 result type or success",
            ["domain", "policy", "result"], registry=r)
        self.sessions = prom.Counter(
            "mailhost_sessions_ended", "POP3/IMAP sessions ended", ["protocol"], registry=r)
        self.latency = prom.Histogram(
            "mailhost_command_duration_seconds", "Time from command to final reply",
            ["protocol", "command"], buckets=LATENCY_BUCKETS, registry=r)
        # With [queue] backend = "postgresql" these two are the whole shared queue
        # (every node reports the same: aggregate nodes with max, not sum), and the
        # held gauge is this node's claimed share.
        self.queue_size = prom.Gauge(
            "mailhost_queue_messages", "Messages in the outbound queue (the whole queue, "
            "shared by every node with the PostgreSQL queue)", registry=r)
        self.queue_oldest = prom.Gauge(
            "mailhost_queue_oldest_age_seconds", "Age of the oldest queued message",
            registry=r)
        self.queue_held = prom.Gauge(
            "mailhost_queue_held_messages", "Queued messages this node's scheduler holds "
            "(the spool: all of them; the PostgreSQL queue: those it has claimed)", registry=r)
        self._queue_stats = queue_stats
        if queue_stats is not None:
            self.queue_size.set_function(lambda: queue_stats()[0])
            self.queue_oldest.set_function(lambda: queue_stats()[1])
        if queue_held is not None:
            self.queue_held.set_function(queue_held)
        # When each session's command under way started (sessions are few and short).
        self._started: dict[Any, float] = {}
        # SMTP sessions inside a MAIL transaction not yet answered or ended.
        self._open: set[Any] = set()

    # -- ISessionObserver -----------------------------------------------------------
    def session_opened(self, session: Any) -> None:
        self.connections.labels(session.protocol).inc()
        self.active.labels(session.protocol).inc()

    def session_closed(self, session: Any) -> None:
        self.active.labels(session.protocol).dec()
        self._started.pop(session, None)
        self._end_transaction(session, "aborted", "none")
        if session.protocol in ("pop3", "imap"):
            self.sessions.labels(session.protocol).inc()

    def command_started(self, session: Any, verb: str) -> None:
        self._started[session] = time.monotonic()

    def command_finished(self, session: Any, verb: str, status: str, octets: int) -> None:
        started = self._started.pop(session, None)
        if started is not None:
            self.latency.labels(session.protocol, verb).observe(time.monotonic() - started)
        if verb == "RCPT":
            self.recipients.labels(status).inc()
        elif verb == "MAIL" and status.startswith("2"):
            self._open.add(session)
        elif verb in ("DATA-END", "BDAT-LAST") or (verb == "BDAT" and status[:1] in ("4", "5")):
            # A message's final reply (a refused chunk ends its transaction too).
            if self._end_transaction(session, "accepted" if status.startswith("2")
                                     else "rejected", status) and octets:
                self.received_bytes.inc(octets)
        elif verb in _TRANSACTION_ENDERS:
            self._end_transaction(session, "aborted", "none")

    def _end_transaction(self, session: Any, result: str, code: str) -> bool:
        """Count the session's open SMTP transaction once; False if none was open."""
        if session not in self._open:
            return False
        self._open.discard(session)
        self.messages.labels(session.protocol, result, code).inc()
        return True

    # -- the other feeds ------------------------------------------------------------
    def login(self, protocol: str, outcome: str) -> None:
        """A login attempt's outcome (``LoginService`` observer): ok, failed, throttled
        or error."""
        self.logins.labels(protocol, outcome).inc()

    def attempt(self, recipients: list[str]) -> None:
        """An outbound delivery attempt (scheduler observer); each item is
        ``addr=kind:reply``, kind delivered/temporary/permanent."""
        for item in recipients:
            kind = str(item).rpartition("=")[2].partition(":")[0] or "unknown"
            self.deliveries.labels(kind).inc()

    def tls_result(self, record: Any) -> None:
        """An outbound TLS result (``tlsrpt.TLSRecord``, TLSReporter observer)."""
        self.tls_results.labels(record.domain, record.policy_type, record.result).inc()

    def resource(self) -> Any:
        """A twisted.web resource tree serving ``/metrics``."""
        from prometheus_client.twisted import MetricsResource
        from twisted.web.resource import Resource

        root = Resource()
        root.putChild(b"metrics", MetricsResource(registry=self.registry))
        return root
