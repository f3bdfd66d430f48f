"""Deliveries that want no UID (SMTP) are durable at commit and numbered afterwards.

The commit needs no dovecot-uidlist lock; an open folder numbers what arrived meanwhile
in batches (one lock round for many deliveries), keeping UIDs visible in ascending
order; an unopened INBOX is left unopened and adopts the files at its next open; a
refresh (SELECT, NOOP, POP3 login) waits for the batches already due.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from mailhost.store._maildir.dotlock import DotLock
from mailhost.store._maildir.dovecot_uidlist import UIDLIST_FILE, UidList
from mailhost.store.interfaces import DeliveryTarget
from mailhost.store.maildir import MaildirStore
from tests.store.test_maildir import A, folder_of, read_all, user_dir


class Recorder:
    """UIDs listeners heard of, in the order they heard them."""

    def __init__(self) -> None:
        self.added: list[int] = []

    def messages_added(self, folder, infos):
        self.added.extend(i.uid for i in infos)

    def flags_changed(self, folder, infos):
        pass

    def messages_expunged(self, folder, uids):
        pass


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "mail")


def msg(n: int) -> bytes:
    return b"From: x@example.test\r\nSubject: %d\r\n\r\nbody %d\r\n" % (n, n)


async def smtp_deliver(store, n: int, user: str = A) -> list:
    w = store.new_message()
    w.write(msg(n))
    return await w.commit([DeliveryTarget(user, want_uid=False)])


async def append(store, n: int) -> int:
    w = store.new_message()
    w.write(msg(n))
    [uid] = await w.commit([DeliveryTarget(A)])
    return uid


def records(root: str) -> dict[str, int]:
    ul = UidList(os.path.join(user_dir(root), UIDLIST_FILE))
    ul.refresh()
    return dict(ul.by_base)


def new_files(root: str) -> list[str]:
    return os.listdir(os.path.join(user_dir(root), "new"))


def later(seconds: float, fn) -> defer.Deferred:
    return task.deferLater(reactor, seconds, fn)


async def subjects(box) -> dict[int, bytes]:
    out = {}
    for info in box.messages():
        out[info.uid] = (await read_all(box, info.uid)).split(b"Subject: ")[1].split(b"\r\n")[0]
    return out


@pytest_twisted.ensureDeferred
async def test_smtp_delivery_is_acknowledged_while_another_holds_the_uidlist_lock(root):
    """The commit never waits for dovecot-uidlist.lock; the UID comes once it is free,
    and a refresh waits for it."""
    store = MaildirStore(root, fsync=True)
    box = await folder_of(store)
    await append(store, 0)
    lock = DotLock(os.path.join(user_dir(root), UIDLIST_FILE))
    lock.acquire()  # free now: no wait on the reactor
    try:
        assert await smtp_deliver(store, 1) == [None]
        assert len(new_files(root)) == 2  # durable in new/ ...
        assert len(records(root)) == 1  # ... with no UID yet
        assert [i.uid for i in box.messages()] == [1]
    finally:
        later(0.3, lock.release)
    await box.refresh()  # waits for the batch that was waiting for the lock
    assert await subjects(box) == {1: b"0", 2: b"1"}
    assert sorted(records(root).values()) == [1, 2]
    assert box.uid_next == 3
    await store.close()


@pytest_twisted.ensureDeferred
async def test_concurrent_smtp_deliveries_share_one_lock_round_per_batch(root):
    store = MaildirStore(root, fsync=True)
    box = await folder_of(store)
    rec = Recorder()
    box.add_listener(rec)
    lock = DotLock(os.path.join(user_dir(root), UIDLIST_FILE))
    lock.acquire()
    try:
        # The first batch waits for the lock; everything else collects meanwhile.
        results = await defer.gatherResults([defer.Deferred.fromCoroutine(
            smtp_deliver(store, n)) for n in range(40)])
    finally:
        lock.release()
    assert results == [[None]] * 40
    await box.refresh()
    assert [i.uid for i in box.messages()] == list(range(1, 41))
    assert sorted(records(root).values()) == list(range(1, 41))
    assert rec.added == list(range(1, 41))  # heard of in ascending order, each once
    assert box.batches <= 2
    assert sorted((await subjects(box)).values()) == sorted(b"%d" % n for n in range(40))
    await store.close()


@pytest_twisted.ensureDeferred
async def test_smtp_deliveries_and_appends_keep_uids_ascending(root):
    """APPEND keeps numbering at once (APPENDUID); mixed with batched deliveries, no
    listener ever hears of a UID below one it heard of before."""
    store = MaildirStore(root, fsync=True)
    box = await folder_of(store)
    rec = Recorder()
    box.add_listener(rec)
    work = []
    for n in range(60):
        coro = append(store, n) if n % 3 == 0 else smtp_deliver(store, n)
        work.append(defer.Deferred.fromCoroutine(coro))
    got = await defer.gatherResults(work)
    appended = [uid for n, uid in enumerate(got) if n % 3 == 0]
    await box.refresh()
    uids = [i.uid for i in box.messages()]
    assert len(uids) == 60 and len(set(uids)) == 60
    assert set(appended) <= set(uids)
    assert rec.added == sorted(rec.added) and len(set(rec.added)) == 60
    assert sorted(records(root).values()) == sorted(uids)
    await store.close()


@pytest_twisted.ensureDeferred
async def test_unopened_inbox_stays_closed_and_numbers_the_files_when_opened(root):
    store = MaildirStore(root, fsync=True)
    for n in range(3):
        assert await smtp_deliver(store, n) == [None]
    account = await store.open_account(A)
    assert "INBOX" not in account._folders
    assert len(new_files(root)) == 3 and records(root) == {}
    box = await account.open_folder("INBOX")
    assert [i.uid for i in box.messages()] == [1, 2, 3]
    assert sorted(records(root).values()) == [1, 2, 3]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_deliveries_while_inbox_opens_are_numbered_once(root):
    store = MaildirStore(root, fsync=True)
    await smtp_deliver(store, 0)  # the account exists; INBOX is not open
    account = await store.open_account(A)
    work = [defer.Deferred.fromCoroutine(smtp_deliver(store, n)) for n in range(1, 15)]
    opening = account.open_folder("INBOX")
    work += [defer.Deferred.fromCoroutine(smtp_deliver(store, n)) for n in range(15, 30)]
    await defer.gatherResults(work)
    box = await opening
    await box.refresh()
    uids = [i.uid for i in box.messages()]
    assert uids == list(range(1, 31))
    assert sorted(records(root).values()) == uids
    assert sorted((await subjects(box)).values()) == sorted(b"%d" % n for n in range(30))
    await store.close()


@pytest_twisted.ensureDeferred
async def test_a_failed_batch_leaves_the_files_for_the_next_rescan(root):
    store = MaildirStore(root, fsync=True)
    box = await folder_of(store)
    await append(store, 0)
    box._uids.lock_timeout = 0.3
    lock = DotLock(os.path.join(user_dir(root), UIDLIST_FILE))
    lock.acquire()
    try:
        await smtp_deliver(store, 1)
        await box._numbered_all()  # the batch gave up on the lock
    finally:
        lock.release()
    assert [i.uid for i in box.messages()] == [1]
    box._uids.lock_timeout = None
    await box.refresh()  # a listing adopts the file
    assert await subjects(box) == {1: b"0", 2: b"1"}
    await store.close()


@pytest_twisted.ensureDeferred
async def test_close_numbers_what_is_waiting(root):
    store = MaildirStore(root, fsync=True)
    await folder_of(store)
    lock = DotLock(os.path.join(user_dir(root), UIDLIST_FILE))
    lock.acquire()
    try:
        await smtp_deliver(store, 1)
    finally:
        later(0.2, lock.release)
    await store.close()
    assert list(records(root).values()) == [1]


@pytest_twisted.ensureDeferred
async def test_a_folder_deleted_with_deliveries_waiting_wakes_its_waiters(root):
    store = MaildirStore(root, fsync=True)
    account = await store.open_account(A)
    await account.create_folder("Work")
    box = await account.open_folder("Work")
    path = os.path.join(box._path, UIDLIST_FILE)
    await box.refresh()
    lock = DotLock(path)
    lock.acquire()
    try:
        w = store.new_message()
        w.write(msg(1))
        assert await w.commit([DeliveryTarget(A, "Work", want_uid=False)]) == [None]
        waiting = box._numbered_all()
        await account.delete_folder("Work")
        assert waiting.called
    finally:
        lock.release()
    await store.close()


@pytest_twisted.ensureDeferred
async def test_listeners_hear_of_a_delivery_within_a_second_without_a_refresh(root):
    store = MaildirStore(root, fsync=True)
    box = await folder_of(store)
    rec = Recorder()
    box.add_listener(rec)
    for n in range(3):
        started = reactor.seconds()
        await smtp_deliver(store, n)
        while not len(rec.added) > n and reactor.seconds() - started < 5:
            await later(0.01, lambda: None)
        assert rec.added == list(range(1, n + 2))
        assert reactor.seconds() - started < 1.0
    await store.close()


@pytest_twisted.ensureDeferred
async def test_a_delivery_dated_now_keeps_the_mtime_its_write_gave(root, monkeypatch):
    """Issue 18: one fstat after the write fixes the mode and shows the mtime; a
    delivery dated now (SMTP) needs no utime, one with an older date still gets it.
    Either way the file has our mode, whatever the umask, and its whole second is
    the delivery's date."""
    import time

    from mailhost.store._maildir import maildir_io
    from mailhost.store.modes import FileModes

    dated: list[tuple] = []
    real_utime = os.utime

    def utime(path, *args, **kwargs):
        dated.append(args)
        return real_utime(path, *args, **kwargs)

    monkeypatch.setattr(maildir_io.os, "utime", utime)
    store = MaildirStore(root, fsync=True, modes=FileModes(file_mode=0o640))
    old = os.umask(0o077)
    try:
        before = int(time.time())
        # A write that lands in a later second than the date the delivery took (a
        # loaded machine, or the file system's clock a tick behind time.time()) gets
        # that date put back with a utime: correct, and up to the clock. So of a
        # bounded run at least one must show the write's own mtime kept.
        sent = 0
        while sent < 20 and len(dated) == sent:
            await smtp_deliver(store, sent)
            sent += 1
        after = int(time.time())
        assert len(dated) < sent
        assert all(before <= d[0][0] == d[0][1] <= after for d in dated)
        w = store.new_message()
        w.write(msg(sent))
        await w.commit([DeliveryTarget(A, want_uid=False, internal_date=1_600_000_000)])
        assert dated[-1] == ((1_600_000_000, 1_600_000_000),)
    finally:
        os.umask(old)
    stats = [os.stat(os.path.join(user_dir(root), "new", name)) for name in new_files(root)]
    seconds = sorted(int(st.st_mtime) for st in stats)
    assert seconds[0] == 1_600_000_000
    assert all(before - 1 <= s <= after for s in seconds[1:])
    assert {st.st_mode & 0o777 for st in stats} == {0o640}
    await store.close()


async def test_a_delivery_written_with_o_sync_skips_the_file_fsync(root, monkeypatch):
    """Issue 18: one target, fsync on: the tmp file is written with O_SYNC (durable
    when the write returns), so the worker thread makes no fsync call for it; only
    the new/ directory is fsynced. A file changed after that write (a utime for an
    older date, a chmod the umask made necessary) is fsynced as before, and with
    fsync off nothing is synchronous.

    A delivery whose write landed in a later second than the date it was given (a
    loaded machine: the O_SYNC write itself may wait that long) gets the date put back
    with a utime, and so its fsync: correct, and up to the clock. So every file fsync
    must follow such a utime, and of a bounded run of deliveries at least one must
    show the skip."""
    import stat

    from mailhost.store.modes import FileModes

    real_open, real_fsync, real_utime = os.open, os.fsync, os.utime
    sync_opens: list[bool] = []  # per tmp file: opened with O_SYNC?
    fsynced: list[str] = []  # "dir", "file" or "utime", per fsync (or utime) call

    def open_(path, flags, *args, **kwargs):
        if os.path.basename(os.path.dirname(str(path))) == ".tmp":
            sync_opens.append(bool(flags & os.O_SYNC))
        return real_open(path, flags, *args, **kwargs)

    def fsync(fd):
        fsynced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return real_fsync(fd)

    def utime(path, *args, **kwargs):
        fsynced.append("utime")
        return real_utime(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "utime", utime)
    old = os.umask(0o077)
    sent = 1
    try:
        store = MaildirStore(root, fsync=True)
        await smtp_deliver(store, 0)  # makes the Maildir
        skipped = False
        while not skipped and sent <= 20:  # each try costs at most a second's edge
            del sync_opens[:], fsynced[:]
            await smtp_deliver(store, sent)
            sent += 1
            assert sync_opens == [True]
            assert fsynced in (["dir"], ["utime", "file", "dir"])
            skipped = fsynced == ["dir"]
        assert skipped

        del sync_opens[:], fsynced[:]
        w = store.new_message()
        w.write(msg(sent))
        await w.commit([DeliveryTarget(A, want_uid=False, internal_date=1_600_000_000)])
        assert sync_opens == [True] and fsynced == ["utime", "file", "dir"]
        await store.close()

        wide = MaildirStore(root, fsync=True, modes=FileModes(file_mode=0o640))
        del sync_opens[:], fsynced[:]
        await smtp_deliver(wide, sent + 1)  # the umask narrowed it: chmod, then fsync
        assert sync_opens == [True] and fsynced.count("file") == 1
        await wide.close()

        loose = MaildirStore(root, fsync=False)
        del sync_opens[:], fsynced[:]
        await smtp_deliver(loose, sent + 2)
        assert sync_opens == [False] and fsynced in ([], ["utime"])
        await loose.close()
    finally:
        os.umask(old)
    assert len(new_files(root)) == sent + 3
    modes = {os.stat(os.path.join(user_dir(root), "new", n)).st_mode & 0o777
             for n in new_files(root)}
    assert modes == {0o600, 0o640}


async def test_a_delivery_whose_mode_the_umask_gives_is_not_fstated(root, monkeypatch):
    """Issue 18: when a created file gets the store's mode from the umask as it is
    (no group to give, the umask clears none of the mode's bits: judged once per
    store), the tmp file is not fstat'ed (a system call a message in the commit
    thread); its mode is still ours, and its mtime is the delivery's second. Under a
    umask that narrows the mode, the file is fstat'ed and fixed as before."""
    import math
    import time

    from mailhost.store._maildir import maildir_io
    from mailhost.store.modes import FileModes, process_umask

    real_fstat = os.fstat
    stated: list[str] = []  # the tmp files fstat'ed

    def fstat(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.basename(os.path.dirname(target)) == ".tmp":
            stated.append(target)
        return real_fstat(fd)

    monkeypatch.setattr(os, "fstat", fstat)
    # The writer's clock reads never straddle a second here (the case that fstats
    # is the test after this one).
    monkeypatch.setattr(maildir_io, "time", _Clock(lambda now: math.floor(now) + 0.5))
    old = os.umask(0o022)
    try:
        assert process_umask() == 0o022
        assert FileModes().created_fits(0o022) and FileModes(0o640).created_fits(0o022)
        assert not FileModes(0o640).created_fits(0o077)
        assert not FileModes(group=os.getgid()).created_fits(0o022)
        assert not FileModes().created_fits(None)
        store = MaildirStore(root, fsync=True, modes=FileModes(file_mode=0o640))
        before = int(time.time())
        for n in range(3):
            await smtp_deliver(store, n)
        after = int(time.time())
        assert stated == [] and store.new_files_fit()
        box = await folder_of(store)
        for info in box.messages():  # the index's date is the file's second
            [name] = [n for n in new_files(root) if n.startswith(info.key)]
            mtime = os.stat(os.path.join(user_dir(root), "new", name)).st_mtime
            assert int(mtime) == int(info.internal_date)
        assert len(box.messages()) == 3
        await store.close()
        os.umask(0o077)
        narrowed = MaildirStore(root, fsync=True, modes=FileModes(file_mode=0o640))
        await smtp_deliver(narrowed, 3)
        assert len(stated) == 1 and not narrowed.new_files_fit()
        await narrowed.close()
    finally:
        os.umask(old)
    stats = [os.stat(os.path.join(user_dir(root), "new", n)) for n in new_files(root)]
    assert len(stats) == 4 and {st.st_mode & 0o777 for st in stats} == {0o640}
    assert all(before - 1 <= int(st.st_mtime) <= after + 1 for st in stats)


class _Clock:
    """Stands for the ``time`` module in maildir_io: ``time()`` is ``shape(now)``;
    the rest is the real module's."""

    def __init__(self, shape) -> None:
        import time

        self._time, self._shape, self.calls = time, shape, 0

    def time(self) -> float:
        self.calls += 1
        return self._shape(self._time.time())

    def __getattr__(self, name: str):
        return getattr(self._time, name)


async def test_a_write_whose_clock_reads_straddle_a_second_is_dated_by_its_mtime(
        root, monkeypatch):
    """Issue 18: a delivery whose clock reads before and after its O_SYNC write fall in
    two seconds (on a busy disk such a write may wait long) is dated by the file's own
    mtime, read with one fstat: only when that second is not the delivery's date does
    the date go back on (a utime), and then the file is fsynced."""
    import math
    import stat

    from mailhost.store._maildir import maildir_io

    real_fstat, real_utime, real_fsync = os.fstat, os.utime, os.fsync
    calls: list = []  # per delivery: ("fstat", mtime second), ("utime", date), "file", "dir"

    def fstat(fd):
        st = real_fstat(fd)
        if os.path.basename(os.path.dirname(os.readlink(f"/proc/self/fd/{fd}"))) == ".tmp":
            calls.append(("fstat", int(st.st_mtime)))
        return st

    def utime(path, times=None, **kwargs):
        calls.append(("utime", int(times[0])))
        return real_utime(path, times, **kwargs)

    def fsync(fd):
        calls.append("dir" if stat.S_ISDIR(real_fstat(fd).st_mode) else "file")
        return real_fsync(fd)

    # A delivery reads the clock twice around its write: here the first read comes a
    # little before the current second, the second within it.
    clock = _Clock(lambda now: math.floor(now) - 0.001 if clock.calls == 1 else
                   math.floor(now) + 0.5)
    old = os.umask(0o022)
    try:
        store = MaildirStore(root, fsync=True)
        await smtp_deliver(store, 0)  # makes the Maildir (and cleans its tmp: a read)
        assert store.new_files_fit()
        monkeypatch.setattr(maildir_io, "time", clock)
        monkeypatch.setattr(os, "fstat", fstat)
        monkeypatch.setattr(os, "utime", utime)
        monkeypatch.setattr(os, "fsync", fsync)
        kept = 0
        for n in range(1, 6):
            del calls[:]
            clock.calls = 0
            await smtp_deliver(store, n)
            assert clock.calls == 2
            [(what, second)] = [c for c in calls if c[0] == "fstat"]
            dates = [c[1] for c in calls if c[0] == "utime"]
            if calls == [("fstat", second), "dir"]:
                kept += 1  # the write gave the file the delivery's second
            else:  # the clock passed a second between the date and the write
                assert calls == [("fstat", second), ("utime", dates[0]), "file", "dir"]
                assert dates[0] != second
        assert kept
        await store.close()
    finally:
        os.umask(old)
    box_store = MaildirStore(root)
    box = await folder_of(box_store)
    for info in box.messages():  # the index's date is the file's second
        [name] = [n for n in new_files(root) if n.startswith(info.key)]
        assert int(os.stat(os.path.join(user_dir(root), "new", name)).st_mtime) \
            == int(info.internal_date)
    await box_store.close()
