"""Folder operations that need not queue for the folder lock (issue 16).

Under a 10-client IMAP load on one INBOX, the folder lock was busy most of the time
(STORE renames, EXPUNGE unlinks, claims of \\Recent, each with a thread round trip):
a NOOP waited 18 ms on average for it only to find nothing, and every session that
reported new mail queued a claim of its own (2.8 claims per new message).
"""

from __future__ import annotations

import os
import threading

import pytest
import pytest_twisted

from mailhost.store.interfaces import DeliveryTarget
from mailhost.store.maildir import MaildirStore
from tests.store.test_maildir import A, deliver, folder_of, user_dir
from tests.store.test_maildir_live import Recorder, claimed, rename_flags, sleep


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "mail")


async def watched(box) -> Recorder:
    """Listen (so inotify watches the folder) and let the watch's first rescan pass."""
    rec = Recorder()
    box.add_listener(rec)
    for _ in range(100):
        await sleep(0.02)
        if not box._disk._events and not box._lock.locked:
            break
    assert box._watching == "inotify"
    return rec


@pytest_twisted.ensureDeferred
async def test_refresh_does_not_wait_for_the_lock_when_only_our_changes_happened(root):
    store = MaildirStore(root, fsync=False)
    box = await claimed(store)
    await watched(box)
    await box.set_flags([1], ["\\Seen"], "add")  # our own rename: the watch sees it
    await box._lock.acquire()  # another session's STORE holds the lock
    try:
        d = box.refresh()
        assert d.called, "refresh queued for the lock with nothing foreign to pick up"
        # Another program's change must still be picked up, so that refresh waits.
        rename_flags(user_dir(root), "FS")
        d = box.refresh()
        assert not d.called
    finally:
        box._lock.release()
    await d
    assert box.get(1).flags == frozenset({"\\Flagged", "\\Seen"})


@pytest.mark.parametrize("op", ["store", "expunge"])
@pytest_twisted.ensureDeferred
async def test_refresh_does_not_wait_for_our_store_or_expunge_still_in_flight(
        root, monkeypatch, op):
    """Under bench/imap_load.py a NOOP still queued behind another session's STORE or
    EXPUNGE: the watch reported the old name gone while the index still had it (the
    index learns of the rename or unlink only when its thread hop returns)."""
    from mailhost.store._maildir import maildir_changes

    store = MaildirStore(root, fsync=False)
    box = await claimed(store)
    await watched(box)
    if op == "expunge":
        await box.set_flags([1], ["\\Deleted"], "add")
        await watched(box)
    name = "unlink_all" if op == "expunge" else "rename_all"
    real, release = getattr(maildir_changes, name), threading.Event()
    monkeypatch.setattr(maildir_changes, "INLINE_RENAMES", 0)  # a STORE's rename in a thread

    def held(*args):  # the files are renamed or gone; the index not told yet
        done = real(*args)
        release.wait(10)
        return done

    monkeypatch.setattr(maildir_changes, name, held)
    busy = box.expunge([1]) if op == "expunge" else box.set_flags([1], ["\\Seen"], "add")
    try:
        for _ in range(250):  # until the watch has reported it (bounded)
            await sleep(0.02)
            store._watcher.drain()
            if box._disk._events:
                break
        assert box._disk._events and box._lock.locked
        d = box.refresh()
        assert d.called, "refresh queued behind our own %s in flight" % op
    finally:
        release.set()
    await busy
    # Under the lock, the flush still looks at what happened, exactly.
    if op == "store":
        rename_flags(user_dir(root), "FS")  # another program's: seen after our STORE
        await box.refresh()
        assert box.get(1).flags == frozenset({"\\Flagged", "\\Seen"})
    else:
        await box.refresh()
        assert box.get(1) is None


@pytest_twisted.ensureDeferred
async def test_claims_that_wait_for_the_lock_are_one_claim(root):
    store = MaildirStore(root, fsync=False)
    for _ in range(2):
        await deliver(store, b"Subject: x\r\n\r\nx\r\n", DeliveryTarget(A, want_uid=True))
    box = await folder_of(store)
    await box._lock.acquire()
    try:
        claims = [box.claim_recent() for _ in range(3)]
        assert len(box._lock.waiting) == 1  # one claim queued, not three
    finally:
        box._lock.release()
    assert [set(await d) for d in claims] == [{1, 2}, set(), set()]
    # Once that claim runs, a later one queues anew (it may have new mail to claim).
    await deliver(store, b"Subject: y\r\n\r\ny\r\n", DeliveryTarget(A, want_uid=True))
    await box._lock.acquire()
    try:
        first = box.claim_recent()
    finally:
        box._lock.release()
    assert set(await first) == {3}
    assert set(await box.claim_recent()) == set()


@pytest_twisted.ensureDeferred
async def test_refresh_does_not_wait_for_a_claim_queued_for_the_lock(root):
    """Under bench/imap_load.py 226 of 285 NOOPs waited for the lock behind another
    session's \\Recent claim: a refresh queued whenever a claim was queued or running.
    A claim now takes effect when made (the messages leave the recent set at once), so
    there is nothing to wait for."""
    store = MaildirStore(root, fsync=False)
    box = await folder_of(store)
    await watched(box)
    for _ in range(2):
        await deliver(store, b"Subject: x\r\n\r\nx\r\n", DeliveryTarget(A, want_uid=True))
    await box.refresh()
    await box._lock.acquire()  # another session's STORE holds the lock
    try:
        claim = box.claim_recent()
        assert not claim.called and box._lock.waiting
        assert [i.recent for i in box.messages()] == [False, False]
        assert not any(box.columns().recent)
        d = box.refresh()
        assert d.called, "refresh queued behind another session's claim"
        assert set(box.claim_recent().result) == set()  # nothing left to claim
    finally:
        box._lock.release()
    assert set(await claim) == {1, 2}
    assert [i.recent for i in box.messages()] == [False, False]
    assert sorted(os.listdir(os.path.join(user_dir(root), "new"))) == []


@pytest_twisted.ensureDeferred
async def test_expunge_counts_quota_in_its_unlinks_thread_hop(root):
    """An EXPUNGE held the folder lock for two thread hops, the unlinks and then the
    quota line in maildirsize; now one, and the count stays exact."""
    store = MaildirStore(root, fsync=False)
    store.set_quota_limits(lambda user: 10_000)
    box = await claimed(store)
    await box.set_flags([1], ["\\Deleted"], "add")
    assert (await store.quota(A)).messages == 1
    hops = []
    real = store.run_blocking

    def counted(fn, *args):
        hops.append(fn)
        return real(fn, *args)

    store.run_blocking = counted
    try:
        assert await box.expunge() == [1]
    finally:
        del store.run_blocking
    assert len(hops) == 1, hops
    usage = await store.quota(A)
    assert (usage.storage, usage.messages) == (0, 0)
    await store.close()


@pytest_twisted.ensureDeferred
async def test_flag_changes_that_wait_for_the_lock_share_one_pass(root, monkeypatch):
    """Under bench/imap_load.py every STORE queued on the folder lock for a thread hop
    of its own. Those waiting together now run as one pass, in the order asked, with
    one rename per file; each caller still gets the flags its own change left."""
    from mailhost.store._maildir import maildir_changes

    store = MaildirStore(root, fsync=False)
    for _ in range(2):
        await deliver(store, b"Subject: x\r\n\r\nx\r\n", DeliveryTarget(A, want_uid=True))
    box = await folder_of(store)
    await box.claim_recent()
    await box.set_flags([2], ["$Label"], "add")  # a keyword with a letter already
    rec = Recorder()
    box.add_listener(rec)
    real, calls = maildir_changes.rename_all, []

    def counted(path, renames):
        calls.append(list(renames))
        return real(path, renames)

    monkeypatch.setattr(maildir_changes, "rename_all", counted)
    await box._lock.acquire()  # another session's EXPUNGE holds the lock
    try:
        asked = [box.set_flags([1], ["\\Seen"], "add"),
                 box.set_flags([2, 1], ["\\Flagged"], "add"),
                 box.set_flags([1], ["\\Seen"], "remove"),
                 box.set_flags([2], ["$Label"], "remove")]
        assert len(box._lock.waiting) == 1
    finally:
        box._lock.release()
    got = [{i.uid: set(i.flags) for i in await d} for d in asked]
    assert got == [{1: {"\\Seen"}},
                   {1: {"\\Seen", "\\Flagged"}, 2: {"\\Flagged", "$Label"}},
                   {1: {"\\Flagged"}},
                   {2: {"\\Flagged"}}]
    assert len(calls) == 1 and len(calls[0]) == 2  # one hop, one rename per file
    assert box.get(1).flags == {"\\Flagged"} and box.get(2).flags == {"\\Flagged"}
    names = sorted(n.partition(":")[2] for n in os.listdir(os.path.join(user_dir(root), "cur")))
    assert names == ["2,F", "2,F"]
    assert sorted(i.uid for i in rec.changed) == [1, 2]  # each heard of once
    await store.close()


@pytest_twisted.ensureDeferred
async def test_expunges_that_wait_for_the_lock_share_one_pass(root, monkeypatch):
    """As flag changes: one thread hop for every expunge waiting for the lock, each
    removed UID reported to the first caller, in the order asked, that named it."""
    from mailhost.store._maildir import maildir_changes

    store = MaildirStore(root, fsync=False)
    store.set_quota_limits(lambda user: 10_000)
    for _ in range(4):
        await deliver(store, b"Subject: x\r\n\r\nx\r\n", DeliveryTarget(A, want_uid=True))
    box = await folder_of(store)
    await box.set_flags([1, 2, 3], ["\\Deleted"], "add")
    real, calls = maildir_changes.unlink_all, []

    def counted(paths):
        calls.append(list(paths))
        return real(paths)

    monkeypatch.setattr(maildir_changes, "unlink_all", counted)
    await box._lock.acquire()
    try:
        asked = [box.expunge([1]), box.expunge(), box.expunge([2, 3, 4])]
        assert len(box._lock.waiting) == 1
    finally:
        box._lock.release()
    assert [await d for d in asked] == [[1], [2, 3], []]
    assert len(calls) == 1 and len(calls[0]) == 3
    assert [i.uid for i in box.messages()] == [4]
    assert (await store.quota(A)).messages == 1
    await store.close()


@pytest_twisted.ensureDeferred
async def test_claim_store_and_expunge_that_wait_for_the_lock_share_one_thread_hop(
        root, monkeypatch):
    """Under bench/imap_load.py a new message's \\Recent claim (another session's NOOP),
    its STORE +FLAGS \\Deleted and its UID EXPUNGE each queued a pass and a thread hop
    of its own on the folder lock, which was then busy ~70% of the time. Waiting
    together, they now run as one pass with one hop, in the order asked: the claimed
    message goes from new/ straight to its flagged name in cur/, and the expunged one
    is unlinked under its indexed name, never renamed first."""
    from mailhost.store._maildir import maildir_changes

    store = MaildirStore(root, fsync=False)
    store.set_quota_limits(lambda user: 10_000)
    for _ in range(3):
        await deliver(store, b"Subject: x\r\n\r\nx\r\n", DeliveryTarget(A, want_uid=True))
    box = await folder_of(store)
    rec = Recorder()
    box.add_listener(rec)
    await watched(box)
    renames, unlinks, hops = [], [], []
    real_rename, real_unlink, real_run = (maildir_changes.rename_all,
                                          maildir_changes.unlink_all, store.run_blocking)

    def renamed(path, pairs):
        renames.append(list(pairs))
        return real_rename(path, pairs)

    def unlinked(paths):
        unlinks.append([os.path.basename(p) for p in paths])
        return real_unlink(paths)

    def counted(fn, *args):
        hops.append(fn)
        return real_run(fn, *args)

    monkeypatch.setattr(maildir_changes, "rename_all", renamed)
    monkeypatch.setattr(maildir_changes, "unlink_all", unlinked)
    await box._lock.acquire()  # another session's change holds the lock
    try:
        store.run_blocking = counted
        claim = box.claim_recent()
        flags = box.set_flags([1, 3], ["\\Flagged"], "add")
        deleted = box.set_flags([2], ["\\Deleted"], "add")
        gone = box.expunge([2])
        assert len(box._lock.waiting) == 1  # one pass queued, not three
    finally:
        box._lock.release()
    try:
        assert set(await claim) == {1, 3}
        assert [(i.uid, set(i.flags)) for i in await flags] == [(1, {"\\Flagged"}),
                                                               (3, {"\\Flagged"})]
        assert [(i.uid, set(i.flags)) for i in await deleted] == [(2, {"\\Deleted"})]
        assert await gone == [2]
    finally:
        del store.run_blocking
    assert len(hops) == 1, hops
    assert len(renames) == 1 and sorted((o.split(os.sep)[0], n.split(os.sep)[0],
                                         n.partition(":")[2]) for o, n in renames[0]) \
        == [("new", "cur", "2,F"), ("new", "cur", "2,F")]
    assert len(unlinks) == 1 and len(unlinks[0]) == 1 and ":" not in unlinks[0][0]
    assert [(i.uid, i.recent, set(i.flags)) for i in box.messages()] \
        == [(1, False, {"\\Flagged"}), (3, False, {"\\Flagged"})]
    assert sorted(os.listdir(os.path.join(user_dir(root), "new"))) == []
    assert sorted(n.partition(":")[2]
                  for n in os.listdir(os.path.join(user_dir(root), "cur"))) == ["2,F", "2,F"]
    assert sorted(i.uid for i in rec.changed) == [1, 3]
    assert rec.expunged == [2]
    usage = await store.quota(A)
    assert usage.messages == 2
    # The watch saw only our own changes: nothing to list again.
    listings = box.listings
    await box.refresh()
    assert box.listings == listings
    await store.close()


@pytest_twisted.ensureDeferred
async def test_open_message_does_not_wait_for_our_rename_in_flight(root, monkeypatch):
    """Under bench/imap_load.py a third of the FETCH BODY[HEADER]s of a just-appended
    message found it already renamed by another session's \\Recent claim (new/ ->
    cur/) still in its thread hop, and waited for the folder lock behind every pass
    queued on it. The in-flight rename's new name is tried at once."""
    from mailhost.store._maildir import maildir_changes

    store = MaildirStore(root, fsync=False)
    await deliver(store, b"Subject: x\r\n\r\nbody\r\n", DeliveryTarget(A, want_uid=True))
    box = await folder_of(store)
    real, release = maildir_changes.rename_all, threading.Event()
    monkeypatch.setattr(maildir_changes, "INLINE_RENAMES", 0)  # the claim's rename in a thread

    def held(*args):  # renamed on disk; the index not told yet
        done = real(*args)
        release.wait(10)
        return done

    monkeypatch.setattr(maildir_changes, "rename_all", held)
    claim = box.claim_recent()
    try:
        for _ in range(250):  # until the thread has renamed it (bounded)
            if os.listdir(os.path.join(user_dir(root), "cur")):
                break
            await sleep(0.02)
        assert box._lock.locked and not os.listdir(os.path.join(user_dir(root), "new"))
        d = box.open_message(1)
        assert d.called, "open_message queued for the lock behind our own rename"
        with d.result as f:
            assert f.read() == b"Subject: x\r\n\r\nbody\r\n"
    finally:
        release.set()
    assert await claim == {1}
    await store.close()


@pytest_twisted.ensureDeferred
async def test_store_renames_on_the_reactor_thread_when_the_uidlist_lock_is_free(
        root, monkeypatch):
    """Under bench/imap_load.py a STORE's or claim's pass held the folder lock for a
    thread hop, 3-5 ms, mostly waiting for the busy reactor to take the result back.
    A few renames now happen at once when dovecot-uidlist.lock can be had without
    waiting; when another program holds it, the pass waits for it in a thread."""
    from mailhost.store._maildir import maildir_changes
    from mailhost.store._maildir.dotlock import DotLock
    from mailhost.store._maildir.dovecot_uidlist import UIDLIST_FILE

    monkeypatch.setattr(maildir_changes, "INLINE_RENAMES", 16)  # more than a STORE of 2
    store = MaildirStore(root, fsync=False)
    for _ in range(2):
        await deliver(store, b"Subject: x\r\n\r\nx\r\n", DeliveryTarget(A, want_uid=True))
    box = await folder_of(store)
    hops = []
    real = store.run_blocking

    def counted(fn, *args):
        hops.append(fn)
        return real(fn, *args)

    store.run_blocking = counted
    try:
        claim = box.claim_recent()
        assert claim.called and set(claim.result) == {1, 2}
        d = box.set_flags([1], ["\\Seen"], "add")
        assert d.called and [set(i.flags) for i in d.result] == [{"\\Seen"}]
        assert hops == []
        assert sorted(n.partition(":")[2]
                      for n in os.listdir(os.path.join(user_dir(root), "cur"))) == ["2,", "2,S"]
        other = DotLock(os.path.join(user_dir(root), UIDLIST_FILE))
        other.acquire()  # another program (Dovecot) holds the uidlist lock
        try:
            d = box.set_flags([2], ["\\Flagged"], "add")
            assert not d.called and len(hops) == 1
        finally:
            other.release()
        assert [set(i.flags) for i in await d] == [{"\\Flagged"}]
    finally:
        del store.run_blocking
    assert box.get(2).flags == {"\\Flagged"}
    await store.close()
