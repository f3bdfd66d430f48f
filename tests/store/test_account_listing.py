"""IAccountListing (optional store power, for the mail view): MemoryStore and
MaildirStore name their accounts and tell listeners of each account they open."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailhost.store.interfaces import DeliveryTarget, IAccountListener, IAccountListing
from mailhost.store.maildir import MaildirStore
from mailhost.store.memory import MemoryStore


@implementer(IAccountListener)
class Heard:
    def __init__(self) -> None:
        self.users: list[str] = []

    def account_opened(self, user: str) -> None:
        self.users.append(user)


@pytest.fixture(params=["memory", "maildir"])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryStore()
    return MaildirStore(str(tmp_path / "mail"), fsync=False)


@pytest_twisted.ensureDeferred
async def test_accounts_are_listed_and_opening_is_heard(store):
    assert verifyObject(IAccountListing, store)
    assert await store.accounts() == []
    heard = Heard()
    assert verifyObject(IAccountListener, heard)
    store.add_account_listener(heard)
    await store.open_account("zed@b.test")
    writer = store.new_message()
    writer.write(b"Subject: x\r\n\r\nx\r\n")
    await writer.commit([DeliveryTarget("amy@a.test", want_uid=False)])
    await store.open_account("zed@b.test")  # heard once
    assert heard.users == ["zed@b.test", "amy@a.test"]
    assert await store.accounts() == ["amy@a.test", "zed@b.test"]
    store.remove_account_listener(heard)
    await store.open_account("new@c.test")
    assert heard.users == ["zed@b.test", "amy@a.test"]


@pytest_twisted.ensureDeferred
async def test_maildir_lists_accounts_on_disk_and_skips_strays(tmp_path):
    root = tmp_path / "mail"
    first = MaildirStore(str(root), fsync=False)
    await first.open_account("old@a.test")
    await first.close()
    os.makedirs(root / "a.test" / "not-a-maildir")
    os.makedirs(root / "bad domain" / "x" / "cur")
    (root / "stray-file").write_text("x")
    second = MaildirStore(str(root), fsync=False)
    assert await second.accounts() == ["old@a.test"]
