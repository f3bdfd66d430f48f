"""The Maildir store's quota count: every way mail comes and goes through the store
keeps ``maildirsize`` equal to what a full recount finds (Dovecot's view)."""

from __future__ import annotations

import pytest_twisted

from mailhost.store._maildir import maildirsize
from mailhost.store.interfaces import DeliveryTarget
from mailhost.store.maildir import MaildirStore
from tests.store.test_maildir import MSG, deliver, folder_of, root, user_dir  # noqa: F401

A, B = "alice@example.test", "bob@example.test"


async def usage(store, user=A):
    u = await store.quota(user)
    return u.storage, u.messages


@pytest_twisted.ensureDeferred
async def test_count_follows_deliveries_copies_expunges_and_deleted_folders(root):  # noqa: F811
    store = MaildirStore(root, fsync=False)
    store.set_quota_limits(lambda user: 10_000 if user == A else 0)
    size = len(MSG)
    try:
        assert await usage(store) == (0, 0)  # writes the file
        assert (await store.quota(A)).storage_limit == 10_000
        # One message to two folders of alice and to bob: three copies, two users.
        await (await store.open_account(A)).create_folder("Archive")
        await usage(store, B)
        await deliver(store, MSG, DeliveryTarget(A), DeliveryTarget(A, "Archive"),
                      DeliveryTarget(B, want_uid=False))
        assert await usage(store) == (2 * size, 2)
        assert await usage(store, B) == (size, 1)
        inbox = await folder_of(store)
        archive = await folder_of(store, "Archive")
        [(_, copied)] = await inbox.copy([1], archive)
        assert await usage(store) == (3 * size, 3)
        await archive.move([copied], inbox)  # same user: no change
        assert await usage(store) == (3 * size, 3)
        await inbox.set_flags([1], ["\\Deleted"], "add")
        assert await inbox.expunge() == [1]
        assert await usage(store) == (2 * size, 2)
        await (await store.open_account(A)).delete_folder("Archive")  # rebuilt next time
        assert await usage(store) == (size, 1)
        for user in (A, B):
            octets, messages, _ = maildirsize.count(user_dir(root, user))
            assert await usage(store, user) == (octets, messages)
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_usage_survives_a_new_store(root):  # noqa: F811
    store = MaildirStore(root, fsync=False)
    await usage(store)
    await deliver(store)
    await store.close()
    again = MaildirStore(root, fsync=False)
    try:
        assert await usage(again) == (len(MSG), 1)
    finally:
        await again.close()
