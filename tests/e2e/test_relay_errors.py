"""What an admin reads when relaying fails: the real reason, and no DNS chatter.

Regression tests for issue 13: every relay attempt logged ``Starting protocol
<…DNSDatagramProtocol…>`` and ``(UDP Port N Closed)``, and an MX failure said
``failed: OSError`` in the log and the queue, hiding the reason.
"""

from __future__ import annotations

import os
import smtplib
import socket
import subprocess
import sys
import time

import pytest_twisted
from twisted.internet import reactor, task, threads

from tests.mailhost_process import MailHostProcess
from tests.outbound.dnsserver import a, mx, start_dns

MAILHOST = os.path.join(os.path.dirname(sys.executable), "mailhost")
DNS_NOISE = ("DNSDatagramProtocol", "UDP Port")


def submit(proc: MailHostProcess, rcpt: str) -> None:
    with smtplib.SMTP("127.0.0.1", proc.ports["submission"], timeout=30) as s:
        s.login("alice@example.test", "alice-pw")
        s.sendmail("alice@example.test", [rcpt],
                   f"From: alice@example.test\r\nTo: {rcpt}\r\nSubject: out\r\n\r\nhi\r\n")


def dsn_texts(proc: MailHostProcess) -> list[str]:
    new = os.path.join(proc.maildir("alice@example.test"), "new")
    if not os.path.isdir(new):
        return []
    out = []
    for name in os.listdir(new):
        with open(os.path.join(new, name), "rb") as f:
            out.append(f.read().decode("utf-8", "replace"))
    return [t for t in out if "Diagnostic-Code:" in t]


def diagnostic(text: str) -> str:
    """The Diagnostic-Code field, unfolded."""
    lines = text.replace("\r\n", "\n").split("\n")
    i = next(n for n, line in enumerate(lines) if line.startswith("Diagnostic-Code:"))
    value = lines[i]
    for line in lines[i + 1:]:
        if not line[:1].isspace():
            break
        value += " " + line.strip()
    return value


@pytest_twisted.ensureDeferred
async def test_refused_mx_names_host_port_and_reason_without_dns_noise(mailhost_factory):
    # Bound, never listening: connections are refused, and no listener of this test
    # (nor of one running beside it) can be given the port meanwhile.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    closed = holder.getsockname()[1]
    dns_port, stop_dns = start_dns({"far.test": [mx(10, "mx.far.test")],
                                    "mx.far.test": [a("127.0.0.1")]})
    proc = mailhost_factory(extra={"outbound": {
        "resolver": f"127.0.0.1:{dns_port}", "port": closed, "retry_initial": 1.0,
        "retry_max": 1.0, "lifetime": 3.0, "connect_timeout": 2.0}})
    try:
        await threads.deferToThread(proc.start)
        await threads.deferToThread(submit, proc, "x@far.test")
        deadline = time.monotonic() + 30
        while not dsn_texts(proc):
            assert time.monotonic() < deadline, proc.log()
            await task.deferLater(reactor, 0.2)
    finally:
        await threads.deferToThread(proc.stop)
        stop_dns()
        holder.close()
    log = proc.log()
    where = f"mx.far.test [127.0.0.1]:{closed}"
    assert f"far.test via {where} failed: cannot connect to {where}: " in log, log
    assert "Connection refused" in log
    assert not [line for line in log.splitlines() if any(n in line for n in DNS_NOISE)], log
    (dsn,) = dsn_texts(proc)
    code = diagnostic(dsn)
    assert f"cannot connect to {where}" in code and "Connection refused" in code, code


def test_dns_lookup_os_error_shows_errno_text_and_resolver(mailhost_factory):
    """A DNS query that fails in the OS (here EINVAL: port 0) says so, and which
    resolver, in the log and in `mailhost queue list`; it said `failed: OSError`."""
    proc = mailhost_factory(extra={"outbound": {
        "resolver": "127.0.0.1:0", "retry_initial": 60.0}}).start()
    try:
        submit(proc, "x@far.test")
        reason = "MX lookup for far.test failed: Invalid argument (EINVAL) (resolver 127.0.0.1:0)"
        deadline = time.monotonic() + 20
        while True:
            listed = subprocess.run(
                [sys.executable, MAILHOST, "--config", proc.config_path, "queue", "list"],
                capture_output=True, text=True, timeout=60)
            if reason in listed.stdout:
                break
            assert time.monotonic() < deadline, listed.stdout + proc.log()
            time.sleep(0.3)
        assert f"outbound: far.test: 451 4.4.3 {reason}" in proc.log()
        assert "OSError" not in proc.log() + listed.stdout
    finally:
        proc.stop()
