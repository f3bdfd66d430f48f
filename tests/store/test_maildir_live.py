"""MaildirStore with other programs changing the Maildir while folders are open.

A file renamed by another program (a flag set, new/ -> cur/) is found by its base
name wherever the store opens, renames, unlinks or links it; a file really gone
leaves the index and listeners hear so. The watch (inotify or polling) tells
listeners of others' changes without any call, and our own changes cost no rescan.
"""

from __future__ import annotations

import os
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from mailhost.store.interfaces import NoSuchMessage
from mailhost.store.maildir import MaildirStore
from tests.store.test_maildir import MSG, A, deliver, folder_of, read_all, user_dir


class Recorder:
    """An IFolderListener keeping what it heard, by kind."""

    def __init__(self) -> None:
        self.added: list = []
        self.changed: list = []
        self.expunged: list[int] = []

    def messages_added(self, folder, infos):
        self.added.extend(infos)

    def flags_changed(self, folder, infos):
        self.changed.extend(infos)

    def messages_expunged(self, folder, uids):
        self.expunged.extend(uids)


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "mail")


def the_file(home: str, sub: str = "cur") -> str:
    (name,) = os.listdir(os.path.join(home, sub))
    return name


def rename_flags(home: str, flags: str) -> str:
    """Another program sets flags the Maildir way: rename cur/<base>:2,<old>."""
    name = the_file(home)
    base = name.partition(":")[0]
    new = f"{base}:2,{flags}"
    os.rename(os.path.join(home, "cur", name), os.path.join(home, "cur", new))
    return new


async def claimed(store, data=MSG):
    """A message delivered and claimed (moved to cur/<base>:2,), with nobody watching."""
    await deliver(store, data)
    box = await folder_of(store)
    await box.claim_recent()
    return box


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_open_message_finds_a_file_another_program_renamed(root):
    store = MaildirStore(root, fsync=False)
    box = await claimed(store)
    rec = Recorder()
    box.add_listener(rec)
    box._unwatch()  # no watch: the open itself must find it
    rename_flags(user_dir(root), "S")
    assert await read_all(box, 1) == MSG
    assert box.get(1).flags == frozenset({"\\Seen"})
    assert [i.flags for i in rec.changed] == [frozenset({"\\Seen"})]


@pytest_twisted.ensureDeferred
async def test_open_message_finds_a_file_moved_from_new_to_cur(root):
    store = MaildirStore(root, fsync=False)
    await deliver(store)
    box = await folder_of(store)
    home = user_dir(root)
    name = the_file(home, "new")
    os.rename(os.path.join(home, "new", name),
              os.path.join(home, "cur", name.partition(":")[0] + ":2,S"))
    assert await read_all(box, 1) == MSG
    info = box.get(1)
    assert not info.recent and info.flags == frozenset({"\\Seen"})


@pytest_twisted.ensureDeferred
async def test_open_message_of_a_vanished_file_is_no_such_message_and_expunges(root):
    store = MaildirStore(root, fsync=False)
    box = await claimed(store)
    rec = Recorder()
    box.add_listener(rec)
    box._unwatch()
    os.unlink(os.path.join(user_dir(root), "cur", the_file(user_dir(root))))
    with pytest.raises(NoSuchMessage):
        await box.open_message(1)
    assert box.get(1) is None
    assert rec.expunged == [1]


@pytest_twisted.ensureDeferred
async def test_store_after_another_programs_flag_rename_keeps_both_flags(root):
    store = MaildirStore(root, fsync=False)
    box = await claimed(store)
    rename_flags(user_dir(root), "S")  # the index still says no flags
    (info,) = await box.set_flags([1], ["\\Flagged"], "add")
    assert info.flags == frozenset({"\\Seen", "\\Flagged"})
    assert the_file(user_dir(root)).endswith(":2,FS")


@pytest_twisted.ensureDeferred
async def test_expunge_after_another_programs_rename_removes_the_file(root):
    """An unlink by the stale name would leave the file behind, to come back as a new
    message with a new UID at the next rescan."""
    store = MaildirStore(root, fsync=False)
    box = await claimed(store)
    await box.set_flags([1], ["\\Deleted"], "add")
    rename_flags(user_dir(root), "ST")  # still \\Deleted, now \\Seen too
    assert await box.expunge() == [1]
    assert os.listdir(os.path.join(user_dir(root), "cur")) == []
    await box.refresh()
    assert box.messages() == []


@pytest_twisted.ensureDeferred
async def test_expunge_keeps_a_message_another_program_undeleted(root):
    store = MaildirStore(root, fsync=False)
    box = await claimed(store)
    await box.set_flags([1], ["\\Deleted"], "add")
    rename_flags(user_dir(root), "S")  # no longer \\Deleted
    assert await box.expunge() == []
    assert box.get(1).flags == frozenset({"\\Seen"})


@pytest_twisted.ensureDeferred
async def test_copy_after_another_programs_rename_copies(root):
    store = MaildirStore(root, fsync=False)
    box = await claimed(store)
    account = await store.open_account(A)
    await account.create_folder("Archive")
    dest = await account.open_folder("Archive")
    rename_flags(user_dir(root), "S")
    ((src, uid),) = await box.copy([1], dest)  # the first try's UID stays unused
    assert src == 1
    assert await read_all(dest, uid) == MSG
    assert dest.get(uid).flags == frozenset({"\\Seen"})


@pytest.mark.parametrize("mode", ["inotify", "poll"])
@pytest_twisted.ensureDeferred
async def test_listeners_hear_other_programs_changes_without_a_call(root, mode):
    store = MaildirStore(root, fsync=False, watch=mode)
    box = await claimed(store)
    rec = Recorder()
    box.add_listener(rec)
    assert box._watching == mode
    await sleep(0.3)
    home = user_dir(root)
    rename_flags(home, "S")
    with open(os.path.join(home, "tmp", "1.M1P1.other"), "wb") as f:
        f.write(MSG)
    os.rename(os.path.join(home, "tmp", "1.M1P1.other"), os.path.join(home, "new", "1.M1P1.other"))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not (rec.added and rec.changed):
        await sleep(0.05)
    assert [i.uid for i in rec.added] == [2]
    assert rec.changed[-1].flags == frozenset({"\\Seen"})
    os.unlink(os.path.join(home, "new", "1.M1P1.other"))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not rec.expunged:
        await sleep(0.05)
    assert rec.expunged == [2]
    box.remove_listener(rec)
    assert box._watching is None and store._watcher.watching == 0
    await store.close()


@pytest_twisted.ensureDeferred
async def test_own_changes_are_not_rescanned(root):
    store = MaildirStore(root, fsync=False)
    box = await claimed(store)
    rec = Recorder()
    box.add_listener(rec)
    await sleep(0.3)
    before, followed = box.listings, box._disk.followed
    for n in range(5):
        await deliver(store)
        await box.set_flags([1], ["\\Seen"], "add" if n % 2 else "remove")
        await box.claim_recent()
        await box.refresh()
    await box.set_flags([2, 3], ["\\Deleted"], "add")
    await box.expunge()
    await sleep(0.3)
    await box.refresh()
    assert box.listings == before and box._disk.followed == followed
    await store.close()


@pytest_twisted.ensureDeferred
async def test_another_programs_renames_and_unlinks_cost_no_listing(root):
    """Regression (issue 16): a flag change, new/ -> cur/ move or expunge by another
    program (Dovecot, or another worker of ours) made the watching folder list new/ and
    cur/ again under the locks; the watch's events say exactly what became of each
    file, so they are applied as they are."""
    store = MaildirStore(root, fsync=False)
    box = await claimed(store)
    await deliver(store)  # uid 2 stays in new/
    await deliver(store)  # uid 3
    await box.refresh()
    rec = Recorder()
    box.add_listener(rec)
    await sleep(0.3)
    await box.refresh()
    listings, followed = box.listings, box._disk.followed
    home = user_dir(root)
    first = rename_flags(home, "S")  # uid 1
    second, third = sorted(os.listdir(os.path.join(home, "new")))
    os.rename(os.path.join(home, "new", second), os.path.join(home, "cur", second + ":2,T"))
    os.rename(os.path.join(home, "cur", second + ":2,T"),
              os.path.join(home, "cur", second + ":2,FT"))
    os.unlink(os.path.join(home, "new", third))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not rec.expunged:
        await sleep(0.05)
    await box.refresh()
    assert rec.expunged == [3]
    assert box.get(1).flags == frozenset({"\\Seen"})
    assert box.get(2).flags == frozenset({"\\Flagged", "\\Deleted"})
    assert sorted(os.listdir(os.path.join(home, "cur"))) == sorted(
        [first, second + ":2,FT"])
    assert await read_all(box, 2) == MSG
    assert box.listings == listings and box._disk.followed > followed
    await store.close()


@pytest_twisted.ensureDeferred
async def test_a_message_another_store_added_and_expunged_still_moves_uidnext(root):
    """RFC 3501 2.3.1.1: UIDNEXT changes when a message is added, even if it is expunged
    before we looked. Another store on the same Maildir (a second worker) delivers and
    expunges one while we watch: the events alone say so, and UIDNEXT moves."""
    store, other = MaildirStore(root, fsync=False), MaildirStore(root, fsync=False)
    box = await claimed(store)
    rec = Recorder()
    box.add_listener(rec)
    await sleep(0.3)
    listings, next_before = box.listings, box.uid_next
    await deliver(other)
    theirs = await folder_of(other)
    await theirs.refresh()
    await theirs.set_flags([2], ["\\Deleted"], "add")
    assert await theirs.expunge() == [2]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and box.uid_next == next_before:
        await sleep(0.05)
        await box.refresh()
    assert box.uid_next == next_before + 1 == 3
    assert [m.uid for m in box.messages()] == [1] and not rec.added
    assert box.listings == listings
    await other.close()
    await store.close()


@pytest_twisted.ensureDeferred
async def test_a_second_link_of_a_message_is_left_to_a_listing(root):
    """Two files of one base name (a hard link another program made) are what only a
    listing sorts out: the events are not followed, the folder lists."""
    store = MaildirStore(root, fsync=False)
    box = await claimed(store)
    rec = Recorder()
    box.add_listener(rec)
    await sleep(0.3)
    listings = box.listings
    home = user_dir(root)
    name = the_file(home)
    os.link(os.path.join(home, "cur", name), os.path.join(home, "cur", name + "S"))
    await sleep(0.3)
    await box.refresh()
    assert box.listings == listings + 1
    assert box.get(1).flags == frozenset()  # the name the index had stays the message
    await store.close()


@pytest_twisted.ensureDeferred
async def test_deleting_a_watched_folder_keeps_the_others_watched(root):
    """Twisted's INotify closes itself when a watched directory is deleted; the store
    stops that folder's watches first, and builds a new descriptor when another
    program deleted it."""
    store = MaildirStore(root, fsync=False)
    account = await store.open_account(A)
    await account.create_folder("Old")
    await account.create_folder("Gone")
    inbox, old, gone = [await account.open_folder(n) for n in ("INBOX", "Old", "Gone")]
    recs = [Recorder() for _ in range(3)]
    for f, r in zip((inbox, old, gone), recs, strict=True):
        f.add_listener(r)
    assert store._watcher.watching == 3
    await account.delete_folder("Old")  # ours
    import shutil

    shutil.rmtree(gone._path)  # another program's
    await sleep(0.3)
    await deliver(store)  # still heard (our own delivery)
    home = user_dir(root)
    with open(os.path.join(home, "new", "2.M2P2.other"), "wb") as f:
        f.write(MSG)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and len(recs[0].added) < 2:
        await sleep(0.05)
    assert [i.uid for i in recs[0].added] == [1, 2]
    assert inbox._watching == "inotify"
    assert gone._watching == "poll"  # its directories are gone: polled, not watched
    await store.close()


@pytest.mark.parametrize("watch", ["inotify", "poll"])
def test_store_watch_key_reaches_the_store(tmp_path, watch):
    from mailhost import config as cfg
    from mailhost.service import make_store

    path = tmp_path / "mailhost.toml"
    path.write_text(f'[store]\nwatch = "{watch}"\n')
    config = cfg.load(str(path))
    assert config.store.watch == watch
    store = make_store(config)
    assert store._watcher.mode == watch


def test_store_watch_key_rejects_other_values(tmp_path):
    from mailhost import config as cfg

    path = tmp_path / "mailhost.toml"
    path.write_text('[store]\nwatch = "fanotify"\n')
    with pytest.raises(cfg.ConfigError, match="store.watch"):
        cfg.load(str(path))


@pytest_twisted.ensureDeferred
async def test_a_renamed_folder_is_watched_at_its_new_place(root):
    store = MaildirStore(root, fsync=False)
    account = await store.open_account(A)
    await account.create_folder("Before")
    box = await account.open_folder("Before")
    rec = Recorder()
    box.add_listener(rec)
    await account.rename_folder("Before", "After")
    assert box.name == "After" and box._watching == "inotify"
    await sleep(0.2)
    with open(os.path.join(box._path, "new", "3.M3P3.other"), "wb") as f:
        f.write(MSG)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not rec.added:
        await sleep(0.05)
    assert [i.key for i in rec.added] == ["3.M3P3.other"]
    await store.close()
    assert store._watcher.watching == 0


@pytest_twisted.ensureDeferred
async def test_rescan_reads_cur_names_one_at_a_time_not_as_a_list(root, monkeypatch):
    """Regression (issue 16: a QRESYNC SELECT of a 100k-message folder no session was
    watching rescanned it holding every cur/ name in a list, ~10 MB of the peak): the
    rescan reads cur/ as a directory stream and still finds another program's change."""
    store = MaildirStore(root, fsync=False)
    box = await claimed(store)
    rename_flags(user_dir(root), "S")
    listed: list[str] = []
    real_listdir = os.listdir

    def listdir(path="."):
        listed.append(os.path.basename(os.fspath(path)))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    before = box.listings
    await box._run(box._rescan.rescan, True)
    assert box.listings == before + 1
    assert "new" in listed and "cur" not in listed
    assert box.get(1).flags == frozenset({"\\Seen"})
    await store.close()
