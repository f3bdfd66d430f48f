"""Two MailHosts in one process: each one's metrics count only its own traffic.

Regression: both hosts' metrics used to watch the global log publisher (and so
counted each other's messages and logins); now each host's metrics hear only its
own sessions, login service and outbound queue (mailhost.sessions).
"""

from __future__ import annotations

import poplib

import pytest

from mailhost.testing import running
from tests.testing import clients

USERS = {"alice@example.test": "secret"}

COUNTERS = [
    ("mailhost_connections_total", {"protocol": "smtp"}),
    ("mailhost_connections_total", {"protocol": "pop3"}),
    ("mailhost_smtp_messages_total", {"protocol": "smtp", "result": "accepted", "code": "250"}),
    ("mailhost_smtp_recipients_total", {"code": "250"}),
    ("mailhost_smtp_received_bytes_total", {}),
    ("mailhost_logins_total", {"protocol": "pop3", "outcome": "ok"}),
    ("mailhost_command_duration_seconds_count", {"protocol": "smtp", "command": "DATA-END"}),
    ("mailhost_sessions_ended_total", {"protocol": "pop3"}),
]


@pytest.mark.mailhost(users=USERS, metrics=True)
def test_two_hosts_in_one_process_count_only_their_own_traffic(mailhost_sync):
    busy = mailhost_sync
    with running(users=USERS, metrics=True) as quiet:
        clients.smtp_send(busy.smtp_port, "alice@example.test", "counted once")
        busy.wait_for_messages(1)
        p = poplib.POP3("127.0.0.1", busy.pop3_port, timeout=10)
        p.user("alice@example.test")
        p.pass_("secret")
        p.quit()
        for name, labels in COUNTERS:
            assert busy.metric(name, **labels) >= 1, (name, labels)
            assert quiet.metric(name, **labels) == 0, (name, labels)
        assert busy.metric("mailhost_smtp_messages_total", protocol="smtp",
                           result="accepted", code="250") == 1
        assert busy.metric("mailhost_logins_total", protocol="pop3", outcome="ok") == 1
