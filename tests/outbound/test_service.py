"""OutboundService in process: MemoryStore, a fake resolver, real loopback servers."""

from __future__ import annotations

import email
import email.policy
import os
import time

import pytest
import pytest_twisted
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from twisted.internet import reactor, task
from zope.interface.verify import verifyObject

from mailhost.auth.directory import UserDirectory
from mailhost.config import Config
from mailhost.outbound.interfaces import IOutboundQueue, QueueRecipient
from mailhost.outbound.service import OutboundService, listen_addresses
from mailhost.settings import OutboundSettings
from mailhost.store.memory import MemoryStore
from tests.mailhost_process import free_port
from tests.outbound.fakes import FakeResolver
from tests.outbound.remote import ScriptedFactory, listen


def make_config(tmp_path, **outbound):
    c = Config()
    c.server.hostname = "mail.example.test"
    c.server.domains = ["example.test"]
    c.server.data_dir = str(tmp_path)
    c.smtp.listen = []
    c.outbound.fsync = False
    c.outbound.scan_interval = 1.0
    c.outbound.retry_initial = 1.0
    c.outbound.retry_max = 1.0
    for k, v in outbound.items():
        setattr(c.outbound, k, v)
    return c


def directory():
    return UserDirectory.in_memory(domains=["example.test"],
                                   users={"alice@example.test": "pw", "bob@example.test": "pw"})


async def inbox(store, user):
    account = await store.open_account(user)
    folder = await account.open_folder("INBOX")
    out = []
    for info in folder.messages():
        f = await folder.open_message(info.uid)
        out.append(email.message_from_bytes(f.read(), policy=email.policy.default))
        f.close()
    return out


async def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await pred()
        if value:
            return value
        await task.deferLater(reactor, 0.05)
    raise AssertionError("timed out")


async def send(svc, sender, rcpts, body=b"Subject: hi\r\n\r\nhello\r\n"):
    w = svc.queue.new_message(sender)
    w.write(body)
    return await w.commit([QueueRecipient(r) for r in rcpts])


async def started(svc):
    svc.startService()
    await svc._started
    return svc


def test_listen_addresses_parses_endpoints():
    assert listen_addresses(["tcp:25", "tcp:2525:interface=127.0.0.1",
                             "tcp6:port=26:interface=\\:\\:1", "unix:/x"]) == {
        ("", 25), ("127.0.0.1", 2525), ("::1", 26)}


@pytest_twisted.ensureDeferred
async def test_queue_interface_and_clean_stop(tmp_path):
    svc = OutboundService(OutboundSettings.from_config(make_config(tmp_path)), MemoryStore(),
                          directory(), resolver=FakeResolver())
    verifyObject(IOutboundQueue, svc.queue)
    await started(svc)
    await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_mx_pointing_at_ourselves_bounces_5_4_6(tmp_path):
    port = free_port()
    config = make_config(tmp_path, port=port)
    store = MemoryStore()
    resolver = FakeResolver(mx={"loop.example": [(10, "mx.loop.example")]},
                            a={"mx.loop.example": ["127.0.0.1"]})
    svc = await started(OutboundService(OutboundSettings.from_config(config), store, directory(), resolver=resolver,
                                        local_addresses=[("127.0.0.1", port)]))
    try:
        await send(svc, "alice@example.test", ["x@loop.example"])
        (dsn,) = await wait_for(lambda: inbox(store, "alice@example.test"))
        status = dsn.get_payload()[1].get_payload()[1]
        assert status["Status"] == "5.4.6"
        assert "loops back to myself" in status["Diagnostic-Code"]
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_mx_named_like_us_for_a_local_domain_delivers_locally(tmp_path):
    config = make_config(tmp_path)
    store = MemoryStore()
    resolver = FakeResolver(mx={"example.test": [(10, "mail.example.test")]},
                            a={"mail.example.test": ["192.0.2.1"]})
    svc = await started(OutboundService(OutboundSettings.from_config(config), store, directory(), resolver=resolver))
    try:
        await send(svc, "someone@remote.example", ["bob@example.test"])
        (msg,) = await wait_for(lambda: inbox(store, "bob@example.test"))
        assert msg["Subject"] == "hi" and msg["Return-Path"] == "<someone@remote.example>"
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_smarthost_with_auth_via_aiosmtpd(tmp_path):
    seen = {}

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            seen["data"] = envelope.original_content
            seen["rcpts"] = envelope.rcpt_tos
            return "250 2.0.0 ok"

    def authenticator(server, session, envelope, mechanism, auth_data):
        seen["auth"] = (mechanism, auth_data.login, auth_data.password)
        return AuthResult(success=auth_data.password == b"s3cret")

    port = free_port()
    c = Controller(Handler(), hostname="127.0.0.1", port=port, authenticator=authenticator,
                   auth_require_tls=False, auth_required=True)
    c.start()
    config = make_config(tmp_path, smarthost=f"127.0.0.1:{port}", smarthost_user="relay",
                         smarthost_password="s3cret", tls_policy="none")
    svc = await started(OutboundService(OutboundSettings.from_config(config), MemoryStore(), directory(), resolver=FakeResolver()))
    try:
        await send(svc, "alice@example.test", ["x@far.example", "y@other.example"])
        await wait_for(lambda: _async(len(seen.get("rcpts", [])) >= 1))
        assert seen["auth"][1:] == (b"relay", b"s3cret")
        assert b"hello" in seen["data"]
    finally:
        await svc.stopService()
        c.stop()


async def _async(value):
    return value


@pytest.fixture
def server_tls(tmp_path):
    from mailhost.config import TLSConfig
    from mailhost.tls import server_options, write_selfsigned

    cert, key = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    write_selfsigned("remote.test", cert, key)
    return server_options(TLSConfig(cert=cert, key=key))


@pytest_twisted.ensureDeferred
async def test_opportunistic_tls_failure_falls_back_to_plaintext(tmp_path, server_tls):
    remote = ScriptedFactory(tls_options=server_tls)
    remote.break_tls = True
    port = await listen(remote)
    config = make_config(tmp_path, port=port.getHost().port)
    resolver = FakeResolver(a={"tls.example": ["127.0.0.1"]})
    svc = await started(OutboundService(OutboundSettings.from_config(config), MemoryStore(), directory(), resolver=resolver))
    try:
        await send(svc, "alice@example.test", ["x@tls.example"])
        (got,) = await wait_for(lambda: _async(remote.received))
        assert not got.tls and remote.connections == 2
    finally:
        await svc.stopService()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_stop_waits_for_grace_then_leaves_mail_queued(tmp_path):
    remote = ScriptedFactory()
    remote.data_reply = lambda rcpts, data: None  # never answers
    port = await listen(remote)
    config = make_config(tmp_path, port=port.getHost().port)
    config.server.shutdown_grace = 0.5
    resolver = FakeResolver(a={"hang.example": ["127.0.0.1"]})
    svc = await started(OutboundService(OutboundSettings.from_config(config), MemoryStore(), directory(), resolver=resolver))
    qid = await send(svc, "alice@example.test", ["x@hang.example"])
    await wait_for(lambda: _async(any(c == "DATA" for c in remote.commands)))
    t0 = time.monotonic()
    await svc.stopService()
    assert time.monotonic() - t0 < 3
    env = svc.files.load_envelope_sync(qid)
    assert env.recipients[0].status == "pending" and env.recipients[0].attempts == 0
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_learns_smtp_listening_ports_from_the_mail_host(tmp_path):
    from mailhost.service import makeService

    config = make_config(tmp_path)
    config.smtp.listen = ["tcp:0:interface=127.0.0.1"]
    config.submission.listen = []
    config.pop3.listen = []
    config.imap.listen = []
    config.store.backend = "memory"
    config.auth.create_postmaster = False
    root = makeService(config, directory=directory(), store=MemoryStore())
    root.outbound._resolver = FakeResolver()
    root.startService()
    try:
        ports = await root.wait_listening()
        port = ports["smtp"][0].getHost().port
        await task.deferLater(reactor, 0.1)
        assert ("127.0.0.1", port) in root.outbound.scheduler.local_addresses
    finally:
        await root.stopService()


@pytest_twisted.ensureDeferred
async def test_dsn_for_a_remote_sender_is_queued_from_the_null_sender(tmp_path):
    remote = ScriptedFactory(hostname="mx.sender.example")
    port = await listen(remote)
    config = make_config(tmp_path, port=port.getHost().port)
    resolver = FakeResolver(mx={"nomail.example": [(0, "")]},
                            a={"sender.example": ["127.0.0.1"]})
    svc = await started(OutboundService(OutboundSettings.from_config(config), MemoryStore(), directory(), resolver=resolver))
    try:
        await send(svc, "carol@sender.example", ["x@nomail.example"])
        (got,) = await wait_for(lambda: _async(remote.received))
        assert got.mail_from == "" and got.rcpts == ["carol@sender.example"]
        msg = email.message_from_bytes(got.data, policy=email.policy.default)
        assert msg.get_content_type() == "multipart/report"
        assert msg.get_payload()[1].get_payload()[1]["Status"] == "5.1.10"
        assert "Return-Path" not in msg
    finally:
        await svc.stopService()
        await port.stopListening()


def test_per_domain_tls_policy_override(tmp_path):
    from mailhost.outbound.routing import Hop

    config = make_config(tmp_path, tls_policy="opportunistic",
                         tls_policy_domains={"strict.example": "verify", "old.example": "none"})
    svc = OutboundService(OutboundSettings.from_config(config), MemoryStore(), directory(), resolver=FakeResolver())
    svc.startService()
    try:
        s = svc.scheduler
        hop = Hop("mx.strict.example", 25, ["192.0.2.1"])
        assert s._policy("strict.example", hop, False, "192.0.2.1").tls == "verify"
        assert s._policy("old.example", hop, False, "192.0.2.1").tls == "none"
        p = s._policy("other.example", hop, False, "192.0.2.1")
        assert p.tls == "opportunistic" and p.tls_context is not None
        assert not p.allow_plain_auth and p.hostname == "mail.example.test"
    finally:
        svc.stopService()


@pytest_twisted.ensureDeferred
async def test_message_with_an_oversized_envelope_is_delivered_after_restart(tmp_path, monkeypatch):
    """An envelope too long to embed (MAX_ENVELOPE lowered to keep this small) is
    written beside the message: after a restart it loads and goes out."""
    from mailhost.outbound import spool

    monkeypatch.setattr(spool, "MAX_ENVELOPE", 200)
    remote = ScriptedFactory()
    port = await listen(remote)
    config = make_config(tmp_path, port=port.getHost().port)
    resolver = FakeResolver(a={"far.example": ["127.0.0.1"]})
    first = OutboundService(OutboundSettings.from_config(config), MemoryStore(), directory(), resolver=resolver)
    rcpts = [f"r{i}@far.example" for i in range(5)]
    qid = await send(first, "alice@example.test", rcpts)  # not started: stays in the spool
    assert qid in os.listdir(first.files.env_dir)
    svc = await started(OutboundService(OutboundSettings.from_config(config), MemoryStore(), directory(), resolver=resolver))
    try:
        await wait_for(lambda: _async(sorted(r for m in remote.received for r in m.rcpts) == rcpts))
        assert remote.received[0].data.endswith(b"hello\r\n")
        assert b"MHQ1" not in remote.received[0].data
    finally:
        await svc.stopService()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_reloaded_settings_reach_the_scheduler_and_a_new_router(tmp_path):
    """Reload hands the running scheduler the new settings, and a new Router when the
    port or smarthost changed: nothing mutates the router in use."""
    import dataclasses

    settings = OutboundSettings.from_config(make_config(tmp_path))
    svc = await started(OutboundService(settings, MemoryStore(), directory(),
                                        resolver=FakeResolver()))
    try:
        router = svc.scheduler.router
        svc.use_settings(dataclasses.replace(settings, lifetime=60.0))
        assert svc.scheduler.settings.lifetime == 60.0 and svc.scheduler.router is router
        svc.use_settings(dataclasses.replace(settings, port=2526, smarthost="127.0.0.1:9"))
        assert svc.scheduler.router is not router
        assert (router.port, router.smarthost) == (settings.port, settings.smarthost)
        assert (svc.scheduler.router.port, svc.scheduler.router.smarthost) == (2526, "127.0.0.1:9")
        assert svc.scheduler.router.resolver is router.resolver
    finally:
        await svc.stopService()


@pytest.mark.parametrize("smarthost", ["127.0.0.1", "localhost"])
@pytest_twisted.ensureDeferred
async def test_outbound_connections_leave_from_source_address(tmp_path, smarthost):
    """``outbound.source_address`` (Postfix's smtp_bind_address): the remote sees our
    connection come from it, for an IP smarthost and for one given by name."""
    seen = {}

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            seen["peer"] = session.peer[0]
            return "250 2.0.0 ok"

    port = free_port()
    c = Controller(Handler(), hostname="127.0.0.1", port=port)
    c.start()
    config = make_config(tmp_path, smarthost=f"{smarthost}:{port}", tls_policy="none",
                         source_address="127.0.0.7")
    svc = await started(OutboundService(OutboundSettings.from_config(config), MemoryStore(),
                                        directory(), resolver=FakeResolver()))
    try:
        await send(svc, "alice@example.test", ["x@far.example"])
        await wait_for(lambda: _async("peer" in seen))
        assert seen["peer"] == "127.0.0.7"
    finally:
        await svc.stopService()
        c.stop()


@pytest.mark.parametrize("key,value", [("source_address", "::1"), ("source_address6", "127.0.0.1"),
                                       ("source_address", "mx.example.test")])
def test_source_address_must_be_an_address_of_its_family(tmp_path, key, value):
    from mailhost.config import ConfigError, validate

    config = make_config(tmp_path, **{key: value})
    with pytest.raises(ConfigError, match=f"outbound.{key}: expected an IPv"):
        validate(config)
