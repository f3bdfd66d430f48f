"""SMTP on a full or read-only disk (issue 17, item 12): 452 4.3.1 before the upload,
and a write that still fails gets the right code and one log line, not a traceback.
The real tmpfs is in tests/e2e/test_full_disk.py."""

from __future__ import annotations

import errno

import pytest_twisted
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from mailhost.diskspace import FULL, READ_ONLY
from mailhost.store.memory import MemoryStore
from tests.smtp.conftest import RawClient


class FakeSpace:
    def __init__(self, problem=None, room: int | None = None) -> None:
        self.problem, self.room, self.asked = problem, room, []

    def shortage(self, size: int = 0):
        self.asked.append(size)
        if self.room is not None and size > self.room:
            return FULL
        return self.problem


class FullDiskStore:
    """A MemoryStore whose writers fail like a full disk: on write, or at commit."""

    def __init__(self, at: str) -> None:
        self.inner, self.at = MemoryStore(), at

    def open_account(self, user):
        return self.inner.open_account(user)

    def new_message(self):
        writer, at = self.inner.new_message(), self.at

        class Writer:
            size = 0

            def write(self, data):
                if at == "write" and b"Subject: f" in data:  # the upload, not the headers
                    raise OSError(errno.ENOSPC, "No space left on device", "/data/tmp/x")
                writer.write(data)

            def commit(self, targets):
                writer.abort()
                return defer.fail(OSError(errno.ENOSPC, "No space left on device"))

            def abort(self):
                writer.abort()

        return Writer()

    def close(self):
        return self.inner.close()


def _session(port: int, size: int | None = None) -> list[bytes]:
    c = RawClient(port)
    c.cmd(b"EHLO c")
    mail = b"MAIL FROM:<s@far.test>" + (b" SIZE=%d" % size if size is not None else b"")
    return [c.cmd(mail), c.cmd(b"RCPT TO:<alice@example.test>"), c.cmd(b"RSET"), c.cmd(b"QUIT")]


@pytest_twisted.ensureDeferred
async def test_full_disk_is_452_at_mail_and_rcpt(smtp_host):
    host = smtp_host()
    host.factory.space = FakeSpace(FULL)
    r = await deferToThread(_session, host.port)
    assert r[0] == b"452 4.3.1 Insufficient system storage"
    assert r[1].startswith(b"503")  # no transaction was opened

    host.factory.space = FakeSpace(room=10_000)  # room for a small message only
    r = await deferToThread(_session, host.port, 50_000)
    assert r[0] == b"452 4.3.1 Insufficient system storage"
    r = await deferToThread(_session, host.port, 5_000)
    assert r[0].startswith(b"250") and r[1].startswith(b"250")
    assert host.factory.space.asked[-2:] == [5_000, 5_000]  # MAIL, then RCPT


@pytest_twisted.ensureDeferred
async def test_read_only_disk_is_451_at_mail(smtp_host):
    host = smtp_host()
    host.factory.space = FakeSpace(READ_ONLY)
    r = await deferToThread(_session, host.port)
    assert r[0] == b"451 4.3.0 Error: mail storage is read-only, try again later"


@pytest_twisted.ensureDeferred
async def test_enospc_during_the_upload_or_commit_is_452_with_one_log_line(smtp_host):
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        replies = []
        for at in ("write", "commit"):
            host = smtp_host(store=FullDiskStore(at))

            def session(port=host.port):
                c = RawClient(port)
                c.cmd(b"EHLO c")
                c.cmd(b"MAIL FROM:<s@far.test>")
                c.cmd(b"RCPT TO:<alice@example.test>")
                c.cmd(b"DATA")
                c.send(b"Subject: f\r\n\r\nx\r\n.\r\n")
                return [c.reply(), c.cmd(b"NOOP")]

            replies.append(await deferToThread(session))
    finally:
        globalLogPublisher.removeObserver(events.append)
    for reply, noop in replies:
        assert reply == b"452 4.3.1 Insufficient system storage"
        assert noop.startswith(b"250")  # the session goes on
    assert not [e for e in events if e.get("log_failure") is not None]  # no traceback
    assert len([e for e in events if e.get("event") == "storage.error"]) == 2
