"""Junk against the live server, store failures, the Maildir store and swaks."""

from __future__ import annotations

import os
import re
import smtplib
import socket
import subprocess

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from mailhost.store.interfaces import IMailStore, StoreError
from mailhost.store.maildir import MaildirStore
from mailhost.store.memory import MemoryStore
from tests.smtp.conftest import RawClient

REPLY_LINE = re.compile(rb"\A[2-5]\d\d[ -]")

words = st.sampled_from([
    b"EHLO x", b"HELO x", b"MAIL FROM:<a@b.test>", b"MAIL FROM:<>", b"RCPT TO:<alice@example.test>",
    b"RCPT TO:<x@far.test>", b"DATA", b".", b"..", b"AUTH PLAIN", b"AUTH LOGIN", b"*", b"=",
    b"STARTTLS", b"RSET", b"NOOP", b"VRFY", b"BDAT 10", b"MAIL FROM:<a@b.test> SIZE=99999999999",
    b"\xff\xfe", b"RCPT TO:<\"@\"@example.test>", b"QUIT",
])
junk = st.lists(st.one_of(words, st.binary(max_size=60)), max_size=25)
seps = st.sampled_from([b"\r\n", b"\n", b"\r", b"", b" "])


class _Failures:
    """Collects logged failures (tracebacks) from the server while a test runs."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        if event.get("log_failure") is not None:
            self.events.append(event)


@pytest_twisted.ensureDeferred
async def test_junk_bytes_get_replies_or_a_clean_close(smtp_host):
    host = smtp_host(command_timeout=3, data_timeout=3, max_junk_commands=1000)
    failures = _Failures()
    globalLogPublisher.addObserver(failures)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(junk, seps)
    def check(parts, sep):
        payload = sep.join(parts) + b"\r\n"
        s = socket.create_connection(("127.0.0.1", host.port), timeout=10)
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            return
        finally:
            s.close()
        lines = data.split(b"\r\n")
        assert lines[-1] == b""
        for line in lines[:-1]:
            assert REPLY_LINE.match(line), (payload, line)

    try:
        await deferToThread(check)

        def alive():
            c = RawClient(host.port)
            return c.greeting, c.cmd(b"NOOP")

        greeting, noop = await deferToThread(alive)
    finally:
        globalLogPublisher.removeObserver(failures)
    assert greeting.startswith(b"220") and noop.startswith(b"250")
    assert failures.events == []


@implementer(IMailStore)
class FailingStore:
    """A MemoryStore whose commits (or writer creation) fail, to test 451 handling."""

    def __init__(self, fail_new: bool = False) -> None:
        self.inner = MemoryStore()
        self.fail_new = fail_new
        self.fail_commit = True

    def open_account(self, user):
        return self.inner.open_account(user)

    def new_message(self):
        if self.fail_new:
            raise OSError("disk on fire")
        writer = self.inner.new_message()
        store = self

        class Writer:
            size = 0

            def write(self, data):
                writer.write(data)

            def commit(self, targets):
                if store.fail_commit:
                    writer.abort()
                    return defer.fail(StoreError("no space left"))
                return writer.commit(targets)

            def abort(self):
                writer.abort()

        return Writer()

    def start(self):
        return self.inner.start()

    def close(self):
        return self.inner.close()


@pytest_twisted.ensureDeferred
async def test_store_commit_failure_is_451_and_session_survives(smtp_host):
    store = FailingStore()
    host = smtp_host(store=store)
    failures = _Failures()
    globalLogPublisher.addObserver(failures)
    try:
        def session():
            c = RawClient(host.port)
            c.cmd(b"EHLO c")
            out = [c.cmd(b"MAIL FROM:<s@far.test>"), c.cmd(b"RCPT TO:<alice@example.test>"),
                   c.cmd(b"DATA")]
            c.send(b"Subject: f\r\n\r\nx\r\n.\r\n")
            out.append(c.reply())
            store.fail_commit = False
            out += [c.cmd(b"MAIL FROM:<s@far.test>"), c.cmd(b"RCPT TO:<alice@example.test>"),
                    c.cmd(b"DATA")]
            c.send(b"Subject: g\r\n\r\ny\r\n.\r\n")
            out.append(c.reply())
            return out

        r = await deferToThread(session)
    finally:
        globalLogPublisher.removeObserver(failures)
    assert r[3] == b"451 4.3.0 Error: queue file write error"
    assert r[7].startswith(b"250")
    assert len(await host.read_messages()) == 1
    assert len(failures.events) == 1  # logged once for the operator, not sent to the client


@pytest_twisted.ensureDeferred
async def test_store_unavailable_at_data_is_451(smtp_host):
    host = smtp_host(store=FailingStore(fail_new=True))

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        return [c.cmd(b"MAIL FROM:<s@far.test>"), c.cmd(b"RCPT TO:<alice@example.test>"),
                c.cmd(b"DATA"), c.cmd(b"RSET"), c.cmd(b"NOOP")]

    r = await deferToThread(session)
    assert r[2] == b"451 4.3.0 Error: queue file write error"
    assert r[3].startswith(b"250") and r[4].startswith(b"250")


@pytest_twisted.ensureDeferred
async def test_maildir_store_end_to_end(smtp_host, tmp_path):
    store = MaildirStore(str(tmp_path / "mail"), fsync=True)
    host = smtp_host(store=store)

    def session():
        with smtplib.SMTP("127.0.0.1", host.port, timeout=10) as s:
            return s.sendmail("s@far.test", ["team@example.test"],
                              b"Subject: maildir\r\n\r\n" + b"line\r\n" * 2000)

    assert await deferToThread(session) == {}
    for user in ("alice", "bob"):
        new = tmp_path / "mail" / "example.test" / user / "new"
        (name,) = os.listdir(new)
        data = (new / name).read_bytes()
        assert data.startswith(b"Return-Path: <s@far.test>\r\nReceived: from ")
        assert data.endswith(b"line\r\n" * 2000)
    await store.close()


@pytest_twisted.ensureDeferred
async def test_swaks_end_to_end(smtp_host):
    host = smtp_host(submission=True, tls=True, allow_plaintext="no")
    inbound = smtp_host()

    def run():
        plain = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{inbound.port}", "--from", "x@far.test",
             "--to", "alice@example.test,nobody@example.test", "--ehlo", "swaks.test",
             "--pipeline", "--body", "hello from swaks", "--h-Subject", "swaks test"],
            capture_output=True, timeout=60)
        tls = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{host.port}", "--from", "bob@example.test",
             "--to", "alice@example.test", "--ehlo", "swaks.test", "--tls",
             "--auth", "LOGIN", "--auth-user", "bob@example.test", "--auth-password", "hunter2",
             "--body", "secure swaks"],
            capture_output=True, timeout=60)
        return plain, tls

    plain, tls = await deferToThread(run)
    assert plain.returncode in (0, 24), plain.stdout.decode()  # 24: some recipients refused
    out = plain.stdout.decode()
    assert "<** 550 5.1.1 <nobody@example.test>" in out
    assert "<~  235 2.7.0" not in out
    assert tls.returncode == 0, tls.stdout.decode()
    assert "~> AUTH LOGIN" in tls.stdout.decode()
    (first,) = await inbound.read_messages()
    assert b"hello from swaks" in first and b"with ESMTP id" in first
    (second,) = await host.read_messages()
    assert b"secure swaks" in second and b"with ESMTPSA id" in second


def test_fakes_and_factory_contracts(tmp_path):
    """The test doubles honour the shared interfaces; bad relay networks are a config error
    (of makeService, which builds SMTP's recipient policy)."""
    import pytest
    from zope.interface.verify import verifyObject

    from mailhost.auth.directory import UserDirectory
    from mailhost.config import Config, ConfigError
    from mailhost.outbound.interfaces import IOutboundQueue, IQueueWriter
    from mailhost.service import makeService
    from tests.smtp.conftest import FakeQueue

    queue = FakeQueue()
    assert verifyObject(IOutboundQueue, queue)
    assert verifyObject(IQueueWriter, queue.new_message("a@b.test"))
    assert verifyObject(IMailStore, FailingStore())
    config = Config()
    config.server.data_dir = str(tmp_path)
    config.smtp.relay_networks = ["10.0.0.0/8", "not-a-network"]
    directory = UserDirectory.in_memory(domains=["example.test"], users={})
    with pytest.raises(ConfigError, match="smtp.relay_networks"):
        makeService(config, store=MemoryStore(), directory=directory,
                    checkers=[directory.checker], queue=queue)


@pytest_twisted.ensureDeferred
async def test_store_failure_withdraws_the_queued_copy_so_the_retry_relays_once(smtp_host):
    """Local and remote recipients: the queued copy is durable but held until the
    local copies commit. When they fail (451), it is withdrawn, so the client's retry
    does not get the message relayed twice."""
    store = FailingStore()
    host = smtp_host(store=store, relay_networks=["127.0.0.1/32"])

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        out = []
        for subject in (b"first", b"retry"):
            out += [c.cmd(b"MAIL FROM:<s@far.test>"), c.cmd(b"RCPT TO:<alice@example.test>"),
                    c.cmd(b"RCPT TO:<carol@remote.test>"), c.cmd(b"DATA")]
            c.send(b"Subject: " + subject + b"\r\n\r\nx\r\n.\r\n")
            out.append(c.reply())
            store.fail_commit = False
        return out

    r = await deferToThread(session)
    assert r[4] == b"451 4.3.0 Error: queue file write error"
    assert r[9].startswith(b"250")
    assert [m[2].endswith(b"Subject: first\r\n\r\nx\r\n") for m in host.queue.withdrawn] == [True]
    assert len(host.queue.committed) == 1 and host.queue.committed[0][2].endswith(b"retry\r\n\r\nx\r\n")
    assert len(await host.read_messages()) == 1
