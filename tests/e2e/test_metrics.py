"""The Prometheus endpoint, scraped with a real HTTP client (curl) from a live server."""

from __future__ import annotations

import poplib
import re
import smtplib
import subprocess

import pytest

from tests.mailhost_process import free_port


def scrape(port: int) -> str:
    r = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/metrics"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def value(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    m = re.search(r"^" + pattern + r"$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_metrics_endpoint_counts_what_happened(mailhost_factory):
    mport = free_port()
    mh = mailhost_factory(extra={"metrics": {"listen": f"tcp:{mport}:interface=127.0.0.1"}})
    mh.start()
    with smtplib.SMTP("127.0.0.1", mh.ports["smtp"], timeout=30) as s:
        s.sendmail("x@elsewhere.test", ["alice@example.test"], b"Subject: m\r\n\r\nhello\r\n")
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("x@elsewhere.test", ["nobody@example.test"], b"Subject: m\r\n\r\nx\r\n")
    pop = poplib.POP3("127.0.0.1", mh.ports["pop3"], timeout=30)
    pop.user("alice@example.test")
    with pytest.raises(poplib.error_proto):
        pop.pass_("wrong")
    pop.quit()
    pop = poplib.POP3("127.0.0.1", mh.ports["pop3"], timeout=30)
    pop.user("alice@example.test")
    pop.pass_("alice-pw")
    pop.quit()

    text = scrape(mport)
    assert value(text, "mailhost_smtp_messages_total", protocol="smtp", result="accepted",
                 code="250") == 1
    assert value(text, "mailhost_smtp_recipients_total", code="550") >= 1
    assert value(text, "mailhost_smtp_received_bytes_total") > 0
    assert value(text, "mailhost_logins_total", protocol="pop3", outcome="ok") == 1
    assert value(text, "mailhost_logins_total", protocol="pop3", outcome="failed") == 1
    # (the fixture probes each port once when it starts the server)
    assert value(text, "mailhost_connections_total", protocol="smtp") >= 1
    assert value(text, "mailhost_connections_total", protocol="pop3") >= 2
    assert value(text, "mailhost_queue_messages") == 0
    assert value(text, "mailhost_command_duration_seconds_count", protocol="smtp",
                 command="RCPT") >= 2
    assert value(text, "mailhost_command_duration_seconds_count", protocol="smtp",
                 command="DATA-END") == 1
    assert value(text, "mailhost_sessions_ended_total", protocol="pop3") >= 1


def test_metrics_queue_and_delivery_attempts(mailhost_factory):
    """A message for an unreachable smarthost: queue gauges and a temporary attempt."""
    import time

    mport, dead = free_port(), free_port()
    mh = mailhost_factory(extra={
        "metrics": {"listen": f"tcp:{mport}:interface=127.0.0.1"},
        "outbound": {"smarthost": f"127.0.0.1:{dead}", "connect_timeout": 2.0}})
    mh.start()
    with smtplib.SMTP("127.0.0.1", mh.ports["submission"], timeout=30) as s:
        s.login("alice@example.test", "alice-pw")
        s.sendmail("alice@example.test", ["friend@remote.test"], b"Subject: out\r\n\r\nx\r\n")
    deadline = time.monotonic() + 20
    while True:
        text = scrape(mport)
        if value(text, "mailhost_delivery_attempts_total", result="temporary") >= 1:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.3)
    assert value(text, "mailhost_queue_messages") == 1
    assert value(text, "mailhost_queue_oldest_age_seconds") >= 0
    assert value(text, "mailhost_smtp_messages_total", protocol="submission",
                 result="accepted", code="250") == 1


def test_metrics_queue_gauges_report_the_shared_postgresql_queue(mailhost_factory, pg_dsn):
    """``[queue] backend = "postgresql"``, two nodes, a smarthost that refuses every
    connection: each node reports the whole shared queue (5 messages, whichever node
    took them) and, as held, the share its own scheduler has claimed (3 and 2)."""
    import time

    import psycopg

    from mailhost.db import migrations

    with psycopg.connect(pg_dsn) as conn:
        migrations.upgrade(conn)
    dead = free_port()
    nodes = []
    for name, host in (("a", "127.0.0.1"), ("b", "127.0.0.2")):
        mport = free_port(host)
        node = mailhost_factory(name, host=host, extra={
            "metrics": {"listen": f"tcp:{mport}:interface={host}"},
            "queue": {"backend": "postgresql", "dsn": pg_dsn, "lease": 30.0, "poll": 0.5},
            "smtp": {"relay_networks": ["127.0.0.0/8"]},
            "outbound": {"smarthost": f"127.0.0.1:{dead}", "connect_timeout": 2.0,
                         "retry_initial": 3600.0}}).start()
        nodes.append((node, mport))
    for (node, _), count in zip(nodes, (3, 2), strict=True):
        with smtplib.SMTP(node.host, node.ports["smtp"], timeout=30) as s:
            for n in range(count):
                s.sendmail("sender@a.test", ["friend@remote.test"],
                           f"Subject: out {n}\r\n\r\nx\r\n".encode())
    seen = {}
    deadline = time.monotonic() + 30  # the next count of the queue (every 5 s)
    while time.monotonic() < deadline:
        seen = {}
        for node, mport in nodes:
            r = subprocess.run(["curl", "-sf", f"http://{node.host}:{mport}/metrics"],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            seen[node.host] = (value(r.stdout, "mailhost_queue_messages"),
                               value(r.stdout, "mailhost_queue_held_messages"),
                               value(r.stdout, "mailhost_queue_oldest_age_seconds"))
        if all(total == 5 for total, _, _ in seen.values()):
            break
        time.sleep(0.3)
    assert {h: (total, held) for h, (total, held, _) in seen.items()} == {
        "127.0.0.1": (5, 3), "127.0.0.2": (5, 2)}, seen
    assert all(0 <= age < 60 for _, _, age in seen.values()), seen
