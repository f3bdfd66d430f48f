"""Fixtures: every contract test runs against every store: MemoryStore, MaildirStore
and DictStore (written in the tests, from the contract alone)."""

from __future__ import annotations

import pytest
from zope.interface import implementer

from mailhost.store.interfaces import IFolderListener
from mailhost.store.maildir import MaildirStore
from mailhost.store.memory import MemoryStore
from tests.store.dictstore import DictStore


@pytest.fixture(params=["memory", "maildir", "dict"])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryStore()
    if request.param == "dict":
        return DictStore()
    return MaildirStore(str(tmp_path / "mail"), fsync=True)


@implementer(IFolderListener)
class Recorder:
    """An IFolderListener that records every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def messages_added(self, folder, infos):
        self.events.append(("added", [i.uid for i in infos]))

    def flags_changed(self, folder, infos):
        self.events.append(("flags", {i.uid: set(i.flags) for i in infos}))

    def messages_expunged(self, folder, uids):
        self.events.append(("expunged", list(uids)))


@pytest.fixture
def recorder():
    return Recorder()
