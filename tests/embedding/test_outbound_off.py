"""``outbound.enabled = false``: a host that only receives and serves mail.

Regression (issue 20): a memory-store host embedded in an application still created
``./mailhost-data/queue`` in the current directory and started a DNS resolver reading
``/etc/resolv.conf`` (whose re-read timer trial calls a dirty reactor), though it never
relays. Off, there is no spool, relay client or resolver, and mail for other domains is
refused as Postfix without relay refuses it.
"""

from __future__ import annotations

import smtplib

import pytest_twisted
from twisted.internet import reactor, threads

from mailhost import InMemoryChecker, MemoryStore, load, makeService

LOOPBACK = "tcp:0:interface=127.0.0.1"


def config(*extra):
    return load(None, ['server.domains=["example.test"]', 'server.allow_plaintext_auth="yes"',
                       f'smtp.listen=["{LOOPBACK}"]', f'submission.listen=["{LOOPBACK}"]',
                       "pop3.listen=[]", "imap.listen=[]", *extra])


def resolver_timers():
    """Delayed calls of a twisted.names resolver (its resolv.conf re-read)."""
    return {c for c in reactor.getDelayedCalls()
            if "maybeParseConfig" in getattr(c.func, "__qualname__", "")}


def smtp_session(ports):
    out = {}
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s:
        s.ehlo()
        s.mail("someone@elsewhere.test")
        out["local"] = s.rcpt("alice@example.test")
        out["remote"] = s.rcpt("customer@gmail.example")
        s.rset()
    with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=30) as s:
        s.login("alice@example.test", "pw")
        s.mail("alice@example.test")
        out["remote_authenticated"] = s.rcpt("customer@gmail.example")
    return out


@pytest_twisted.ensureDeferred
async def test_memory_host_without_outbound_creates_no_queue_and_starts_no_resolver(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default data_dir is ./mailhost-data
    svc = makeService(config("outbound.enabled=false"), store=MemoryStore(),
                      checkers=[InMemoryChecker({"alice@example.test": "pw"})])
    before = resolver_timers()  # other tests' hosts in this process may leave theirs
    svc.startService()
    try:
        ports = {k: v[0].getHost().port for k, v in (await svc.wait_listening()).items()}
        timers = resolver_timers() - before
        replies = await threads.deferToThread(smtp_session, ports)
    finally:
        await svc.stopService()
    assert svc.outbound is None and svc.queue is None
    assert timers == set()
    assert list(tmp_path.iterdir()) == []  # nothing on disk at all
    assert replies["local"][0] == 250
    assert replies["remote"] == (554, b"5.7.1 <customer@gmail.example>: Relay access denied")
    code, text = replies["remote_authenticated"]
    assert code == 554 and b"does not deliver to other domains" in text, text


@pytest_twisted.ensureDeferred
async def test_with_outbound_on_the_queue_and_resolver_are_there(tmp_path, monkeypatch):
    """The contrast that shows the test above measures something."""
    monkeypatch.chdir(tmp_path)
    svc = makeService(config(), store=MemoryStore(),
                      checkers=[InMemoryChecker({"alice@example.test": "pw"})])
    before = resolver_timers()
    svc.startService()
    try:
        await svc.wait_listening()
        timers = resolver_timers() - before
        queue = svc.queue
    finally:
        await svc.stopService()
    assert queue is not None and (tmp_path / "mailhost-data" / "queue").is_dir()
    # The router asks the [dns] lookup now, which reads resolv.conf at its first lookup
    # and keeps no timer, so not even an outbound host leaves one.
    assert svc.outbound.dns_lookup() is not None and timers == set()
