"""One delivery transaction over any number of ``IDeliveryTarget``s."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailhost.message.target import IDeliveryTarget
from mailhost.outbound.interfaces import QueueRecipient
from mailhost.outbound.queue_target import QueueTarget
from mailhost.smtp.delivery import Delivery, targets_for
from mailhost.store.interfaces import DeliveryTarget
from mailhost.store.mailbox_target import MailboxTarget
from mailhost.store.memory import MemoryStore
from tests.smtp.conftest import FakeQueue


@implementer(IDeliveryTarget)
class Recorder:
    """A target that logs every call into a shared journal, and fails where told."""

    def __init__(self, name: str, journal: list, holds: bool = True,
                 fail: str | None = None) -> None:
        self.name, self.journal, self.holds, self.fail = name, journal, holds, fail
        self.data = b""

    def _step(self, step: str) -> None:
        self.journal.append((self.name, step))
        if step == self.fail:
            raise OSError(f"{self.name} {step} failed")

    def begin(self) -> None:
        self._step("begin")

    def write(self, data: bytes) -> None:
        self.data += data

    def prepare(self):
        return defer.maybeDeferred(self._step, "prepare").addCallback(lambda _: self.name)

    def commit(self) -> None:
        self._step("commit")

    def abort(self):
        self._step("abort")


def test_targets_provide_the_interface():
    store, queue = MemoryStore(), FakeQueue()
    verifyObject(IDeliveryTarget, MailboxTarget(store, "s@x.test", [DeliveryTarget("u@x.test")]))
    verifyObject(IDeliveryTarget, QueueTarget(queue, "s@x.test", [QueueRecipient("r@far.test")]))
    verifyObject(IDeliveryTarget, Recorder("r", []))
    kinds = [type(t) for t in targets_for(store, queue, "s@x.test", ["u@x.test"],
                                          [QueueRecipient("r@far.test")])]
    assert kinds == [MailboxTarget, QueueTarget]
    with pytest.raises(ValueError):
        targets_for(store, None, "s@x.test", [], [QueueRecipient("r@far.test")])


@pytest_twisted.ensureDeferred
async def test_holding_targets_prepare_first_and_all_commit_after_all_prepared():
    journal: list = []
    local = Recorder("local", journal, holds=False)
    queue_a, queue_b = Recorder("qa", journal), Recorder("qb", journal)
    delivery = Delivery([local, queue_a, queue_b], header=b"Received: x\r\n")
    delivery.write(b"body\r\n")
    assert await delivery.commit() == ["qa", "qb", "local"]
    assert [s for s in journal if s[1] != "begin"] == [
        ("qa", "prepare"), ("qb", "prepare"), ("local", "prepare"),
        ("qa", "commit"), ("qb", "commit"), ("local", "commit")]
    assert local.data == queue_a.data == b"Received: x\r\nbody\r\n"


@pytest_twisted.ensureDeferred
async def test_a_failed_prepare_aborts_every_target_and_commits_none():
    journal: list = []
    targets = [Recorder("local", journal, holds=False, fail="prepare"), Recorder("q", journal)]
    delivery = Delivery(targets)
    with pytest.raises(OSError):
        await delivery.commit()
    assert ("q", "commit") not in journal and ("local", "commit") not in journal
    assert {("q", "abort"), ("local", "abort")} <= set(journal)


def test_a_failed_begin_aborts_the_targets_already_begun():
    journal: list = []
    with pytest.raises(OSError):
        Delivery([Recorder("a", journal), Recorder("b", journal, fail="begin"),
                  Recorder("c", journal)])
    assert ("a", "abort") in journal and ("c", "begin") not in journal


def test_abort_is_idempotent_and_a_no_op_once_commit_started():
    journal: list = []
    delivery = Delivery([Recorder("a", journal)])
    delivery.abort()
    delivery.abort()
    assert journal.count(("a", "abort")) == 1
    journal.clear()
    started = Delivery([Recorder("b", journal)])
    started.commit()
    started.abort()
    assert ("b", "abort") not in journal


@pytest_twisted.ensureDeferred
async def test_queue_target_withdraws_a_held_copy_and_releases_on_commit():
    queue = FakeQueue()
    dropped = QueueTarget(queue, "s@x.test", [QueueRecipient("r@far.test")])
    dropped.begin()
    dropped.write(b"one\r\n")
    assert await dropped.prepare() == "Q1"
    await dropped.abort()
    kept = QueueTarget(queue, "s@x.test", [QueueRecipient("r@far.test")])
    kept.begin()
    kept.write(b"two\r\n")
    await kept.prepare()
    assert queue.committed == []  # held until commit
    kept.commit()
    assert [m[2] for m in queue.withdrawn] == [b"one\r\n"]
    assert [m[2] for m in queue.committed] == [b"two\r\n"]


@pytest_twisted.ensureDeferred
async def test_mailbox_target_writes_return_path_and_delivers_at_prepare():
    store = MemoryStore()
    target = MailboxTarget(store, "s@x.test", [DeliveryTarget("u@x.test")])
    target.begin()
    target.write(b"Subject: hi\r\n\r\nhello\r\n")
    assert await target.prepare() is None
    target.commit()
    target.abort()  # a no-op once delivered
    account = await store.open_account("u@x.test")
    folder = await account.open_folder("INBOX")
    (info,) = folder.messages()
    assert target.uids == [info.uid]
    f = await folder.open_message(info.uid)
    try:
        assert f.read() == b"Return-Path: <s@x.test>\r\nSubject: hi\r\n\r\nhello\r\n"
    finally:
        f.close()
