"""RFC 8474 mailbox ids and RFC 8514 save dates in the store contract, for every store
(MemoryStore, MaildirStore, DictStore), and Maildir's persistence of both."""

from __future__ import annotations

import os
import time

import pytest_twisted

from mailhost.store.interfaces import DeliveryTarget
from mailhost.store.maildir import MaildirStore
from mailhost.store.objectid import email_id, is_objectid
from tests.store.test_contract import MSG, A, deliver


@pytest_twisted.ensureDeferred
async def test_mailbox_ids_are_objectids_distinct_and_survive_rename(store):
    account = await store.open_account(A)
    await account.create_folder("Work.Sub")
    names = ["INBOX", "Sent", "Work", "Work.Sub"]
    ids = {n: (await account.open_folder(n)).mailbox_id for n in names}
    assert all(is_objectid(i) for i in ids.values())
    assert len(set(ids.values())) == len(names)
    await account.rename_folder("Work", "Job")
    assert (await account.open_folder("Job")).mailbox_id == ids["Work"]
    assert (await account.open_folder("Job.Sub")).mailbox_id == ids["Work.Sub"]
    await account.delete_folder("Job.Sub")
    await account.create_folder("Job.Sub")
    assert (await account.open_folder("Job.Sub")).mailbox_id != ids["Work.Sub"]


@pytest_twisted.ensureDeferred
async def test_save_dates_known_stable_and_per_copy(store):
    before = int(time.time())
    await deliver(store)
    account = await store.open_account(A)
    box = await account.open_folder("INBOX")
    got = await box.save_dates([1, 99])
    assert list(got) == [1]
    assert before - 1 <= got[1] <= time.time() + 1
    await box.set_flags([1], ["\\Seen"], "add")  # Maildir: a rename, a new ctime
    assert (await box.save_dates([1]))[1] == got[1]
    sent = await account.open_folder("Sent")
    (_, new), = await box.copy([1], sent)
    assert new in await sent.save_dates([new])
    await box.set_flags([1], ["\\Deleted"], "add")
    await box.expunge()
    assert await box.save_dates([1]) == {}


def test_email_id_is_an_objectid_from_the_key():
    maildir_key = "1733370000.M123P456V803I12345.host.example,S=1234"
    assert is_objectid(email_id(maildir_key))
    assert email_id(maildir_key) == email_id(maildir_key) != email_id(maildir_key + "x")
    assert email_id(maildir_key)[0].isalpha()


@pytest_twisted.ensureDeferred
async def test_maildir_ids_and_save_dates_survive_restart(tmp_path):
    root = str(tmp_path / "mail")
    store = MaildirStore(root, fsync=True)
    await deliver(store, MSG, DeliveryTarget(A))
    box = await (await store.open_account(A)).open_folder("INBOX")
    mailbox_id, saved = box.mailbox_id, (await box.save_dates([1]))[1]
    key = box.get(1).key
    await store.close()
    # A touch of the file (what a rename does to its ctime) must not move the date.
    path = os.path.join(root, "example.test", "alice")
    assert os.path.isdir(path)
    store = MaildirStore(root, fsync=True)
    box = await (await store.open_account(A)).open_folder("INBOX")
    await box.set_flags([1], ["\\Flagged"], "add")
    assert box.mailbox_id == mailbox_id
    assert (await box.save_dates([1]))[1] == saved
    assert box.get(1).key == key
    with open(os.path.join(path, "dovecot-uidlist")) as f:
        assert f" g{mailbox_id}" in f.readline().lower()
    await store.close()


@pytest_twisted.ensureDeferred
async def test_copy_and_move_keep_the_email_id(store):
    from mailhost.store.objectid import email_id_in

    await deliver(store)
    await deliver(store)
    account = await store.open_account(A)
    box = await account.open_folder("INBOX")
    sent = await account.open_folder("Sent")
    first, second = email_id_in(box, 1), email_id_in(box, 2)
    assert first != second and is_objectid(first)
    (_, copied), = await box.copy([1], sent)
    (_, moved), = await box.move([2], sent)
    assert email_id_in(sent, copied) == first and email_id_in(sent, moved) == second
    (_, back), = await sent.copy([moved], box)
    assert email_id_in(box, back) == second
    assert email_id_in(box, 99) is None
