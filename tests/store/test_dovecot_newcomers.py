"""Regression (issue 13): mailhost renumbered messages Dovecot had already numbered.

Dovecot APPENDed two messages (UIDs 4, 5: files and records); before our index had
picked them up, our APPEND got UID 6 and handed it to the index. When the next listing
then found Dovecot's files, their records were below the highest UID handed out, so
the "reappeared" rule gave them new UIDs (7, 8) and wrote those records: Dovecot's
messages changed UID under its clients ("Duplicate file entry"). Now every record
another program wrote below a UID we hand out is picked up with it, keeping its UID,
and sessions still see UIDs appear in ascending order only.

The second writer here does what Dovecot does: under dovecot-uidlist.lock it puts the
file in new/ or cur/ and appends its record.
"""

from __future__ import annotations

import os
import time

import pytest
import pytest_twisted

from mailhost.store._maildir.dotlock import DotLock
from mailhost.store._maildir.dovecot_uidlist import UIDLIST_FILE, UidList
from mailhost.store.interfaces import DeliveryTarget
from mailhost.store.maildir import MaildirStore
from tests.store.test_delivery_batches import Recorder, msg, smtp_deliver
from tests.store.test_maildir import A, deliver, folder_of, read_all, user_dir


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "mail")


def uidlist(home: str) -> UidList:
    ul = UidList(os.path.join(home, UIDLIST_FILE))
    ul.refresh()
    return ul


def record_lines(home: str) -> list[tuple[int, str]]:
    with open(os.path.join(home, UIDLIST_FILE)) as f:
        lines = f.read().splitlines()[1:]
    return [(int(u), name) for u, _, name in (line.partition(" :") for line in lines)]


class SecondWriter:
    """Saves messages into a folder the way Dovecot does, behind our back."""

    def __init__(self, home: str) -> None:
        self.home = home
        self.n = 0

    def base(self) -> str:
        self.n += 1
        size = len(msg(1000 + self.n))
        return f"{int(time.time())}.M{self.n}P4242.dovecot,S={size},W={size}"

    def save(self, count: int, flagged: bool = False, own: list[str] = ()) -> list[tuple[int, str]]:
        """``count`` messages (in cur/ with ``:2,S`` when ``flagged``), plus records for
        ``own`` files already in new/ (its sync numbering files it found), under the
        lock; returns the (uid, base) records it wrote, in order."""
        lock = DotLock(os.path.join(self.home, UIDLIST_FILE))
        lock.acquire()
        try:
            ul = uidlist(self.home)
            uid = ul.next_uid
            wrote = []
            for base in own:
                wrote.append((uid, base))
                uid += 1
            for _ in range(count):
                base = self.base()
                rel = os.path.join("cur", base + ":2,S") if flagged else os.path.join("new", base)
                with open(os.path.join(self.home, rel), "wb") as f:
                    f.write(msg(1000 + self.n))
                wrote.append((uid, base))
                uid += 1
            with open(os.path.join(self.home, UIDLIST_FILE), "a") as f:
                f.write("".join(f"{u} :{b}\n" for u, b in wrote))
            return wrote
        finally:
            lock.release()


async def check_kept(box, home: str, theirs: list[tuple[int, str]], rec: Recorder) -> None:
    """Their records keep their UIDs, on disk and in the index, after a full rescan;
    each base has one record; listeners heard UIDs in ascending order, each once."""
    await box._run(box._rescan.rescan, True)
    on_disk = uidlist(home).by_base
    shown = {i.uid: i.key for i in box.messages()}
    for uid, base in theirs:
        assert on_disk[base] == uid
        assert shown.get(uid) == base
    lines = record_lines(home)
    assert len({name for _, name in lines}) == len(lines)  # one record per file
    assert rec.added == sorted(set(rec.added))
    assert sorted(shown) == sorted(on_disk.values())


@pytest_twisted.ensureDeferred
async def test_dovecot_appends_keep_their_uids_when_our_append_comes_first(root):
    store = MaildirStore(root)
    for _ in range(3):
        await deliver(store)
    home = user_dir(root)
    box = await folder_of(store)
    rec = Recorder()
    box.add_listener(rec)
    dovecot = SecondWriter(home)
    theirs = dovecot.save(2)  # UIDs 4 and 5, not yet seen by our index
    [uid] = await deliver(store)
    assert [u for u, _ in theirs] == [4, 5]
    assert uid == 6
    assert [i.uid for i in box.messages()] == [1, 2, 3, 4, 5, 6]
    assert rec.added == [4, 5, 6]
    assert await read_all(box, 4) == msg(1001)
    theirs += dovecot.save(2, flagged=True)  # in cur/, flagged: found by a listing
    [uid] = await deliver(store)
    assert uid == 9
    assert "\\Seen" in box.get(7).flags
    await check_kept(box, home, theirs, rec)
    await store.close()


@pytest_twisted.ensureDeferred
async def test_dovecot_appends_keep_their_uids_under_our_delivery_batches_and_copies(root):
    store = MaildirStore(root)
    await deliver(store)
    home = user_dir(root)
    account = await store.open_account(A)
    await account.create_folder("Other")
    box = await folder_of(store)
    other = await folder_of(store, "Other")
    rec = Recorder()
    box.add_listener(rec)
    dovecot = SecondWriter(home)
    theirs = dovecot.save(2)
    # SMTP deliveries, numbered in a batch afterwards.
    for n in range(3):
        assert await smtp_deliver(store, n) == [None]
    await box.refresh()
    theirs += dovecot.save(1, flagged=True)
    # COPY into INBOX.
    await deliver(store, msg(77), DeliveryTarget(A, "Other"))
    [(_, copied)] = await other.copy([1], box)
    assert copied == 8
    await check_kept(box, home, theirs, rec)
    assert [u for u, _ in theirs] == [2, 3, 7]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_dovecot_numbering_our_delivered_file_first_is_kept(root):
    """Dovecot's sync numbers a file we delivered (SMTP, not numbered yet) and saves one
    of its own; our batch then keeps Dovecot's UID for ours, and a concurrent APPEND
    comes after both."""
    store = MaildirStore(root)
    await deliver(store)
    home = user_dir(root)
    box = await folder_of(store)
    rec = Recorder()
    box.add_listener(rec)
    lock = DotLock(os.path.join(home, UIDLIST_FILE))
    lock.acquire()  # our batch waits for it, as for Dovecot's
    try:
        assert await smtp_deliver(store, 5) == [None]
    finally:
        lock.release()
    [ours] = [n for n in os.listdir(os.path.join(home, "new"))
              if n.partition(":")[0] not in box._index.by_base]
    dovecot = SecondWriter(home)
    theirs = dovecot.save(1, own=[ours.partition(":")[0]])
    [uid] = await deliver(store)
    await box.refresh()
    assert [u for u, _ in theirs] == [2, 3]
    assert uid == 4
    await check_kept(box, home, theirs, rec)
    await store.close()


@pytest_twisted.ensureDeferred
async def test_a_listing_that_found_dovecots_file_first_does_not_renumber_it(root):
    """The race: a rescan lists Dovecot's file, our APPEND hands it out meanwhile, the
    rescan's adoption then brings it again: same UID, shown once."""
    store = MaildirStore(root)
    await deliver(store)
    home = user_dir(root)
    box = await folder_of(store)
    rec = Recorder()
    box.add_listener(rec)
    dovecot = SecondWriter(home)
    theirs = dovecot.save(1)
    foreign = [("new", theirs[0][1])]
    [uid] = await deliver(store)  # hands Dovecot's UID 2 with our 3
    assert uid == 3
    await box._run(box._rescan.adopt, foreign)  # as a listing made before that would
    await check_kept(box, home, theirs, rec)
    assert rec.added == [2, 3]
    await store.close()
