"""dovecot-keywords shared live with another writer (Dovecot's rules, no Dovecot here).

A second writer (another KeywordFile, or a plain write as Dovecot does it) changes the
file between our reads: a letter it gave out is never given to another keyword, our
folder learns its letters, and file names carrying them show the right keyword.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import pytest_twisted

from mailhost.store._maildir.dotlock import DotLock
from mailhost.store._maildir.dovecot_keywords import KeywordFile
from mailhost.store._maildir.dovecot_uidlist import UIDLIST_FILE
from mailhost.store._maildir.maildir_names import KEYWORDS_FILE, Keywords
from mailhost.store.interfaces import StoreError
from mailhost.store.maildir import MaildirStore
from mailhost.store.modes import PRIVATE
from tests.store.test_maildir import MSG, deliver, folder_of, user_dir
from tests.store.test_maildir_live import Recorder, sleep


def kwfile(path: str) -> KeywordFile:
    return KeywordFile(path, PRIVATE, False, lambda: DotLock(os.path.join(path, UIDLIST_FILE)))


def read_map(path: str) -> dict[int, str]:
    with open(os.path.join(path, KEYWORDS_FILE)) as f:
        return Keywords.parse(f.read()).by_index


def dovecot_writes(path: str, text: str) -> None:
    """Another writer replaces the file, as Dovecot does (lock file renamed over it)."""
    tmp = os.path.join(path, KEYWORDS_FILE + ".lock")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(path, KEYWORDS_FILE))


def test_a_letter_another_writer_gave_out_is_never_reused(tmp_path):
    path = str(tmp_path)
    ours, theirs = kwfile(path), kwfile(path)
    assert ours.current() == (0, {})  # read: no file yet
    theirs.learn(["$Work"])
    _, by_index = ours.learn(["$Later"])
    assert by_index == {0: "$Work", 1: "$Later"}
    assert read_map(path) == {0: "$Work", 1: "$Later"}
    dovecot_writes(path, "0 $Work\n1 $Later\n2 $Dovecot\n")
    _, by_index = ours.learn(["$Mine"])
    assert by_index == {0: "$Work", 1: "$Later", 2: "$Dovecot", 3: "$Mine"}
    assert os.listdir(path) == [KEYWORDS_FILE]  # no lock or temp file left


def test_the_whole_second_mtime_grows_with_every_write(tmp_path):
    """Dovecot re-reads only when st_mtime (whole seconds) differs from what it read."""
    path = str(tmp_path)
    k = kwfile(path)
    seen = []
    for name in ("$A", "$B", "$C"):
        k.learn([name])
        seen.append(int(os.stat(os.path.join(path, KEYWORDS_FILE)).st_mtime))
    assert seen[0] < seen[1] < seen[2]


def test_new_letters_wait_for_the_uidlist_lock_and_read_what_its_holder_wrote(tmp_path):
    path = str(tmp_path)
    k = kwfile(path)
    k.current()
    holder = DotLock(os.path.join(path, UIDLIST_FILE))
    holder.acquire()
    result = []
    t = threading.Thread(target=lambda: result.append(k.learn(["$Later"])))
    t.start()
    time.sleep(0.3)
    assert not result  # waiting for Dovecot's lock
    dovecot_writes(path, "0 $Work\n")  # what Dovecot did while it held the lock
    holder.release()
    t.join(10)
    assert result[0][1] == {0: "$Work", 1: "$Later"}
    assert read_map(path) == {0: "$Work", 1: "$Later"}


def test_names_match_case_insensitively_as_in_dovecot(tmp_path):
    """A second line for ``$work`` would be skipped by Dovecot, which would then call
    its letter ``unknown-1`` and write that over it."""
    path = str(tmp_path)
    dovecot_writes(path, "0 $Work\n")
    k = kwfile(path)
    _, by_index = k.learn(["$work", "$WORK"])
    assert by_index == {0: "$Work"}
    assert Keywords(by_index).letters_of({"$work"}) == "a"


def test_an_existing_file_is_read_as_is_and_keeps_its_letters(tmp_path):
    path = str(tmp_path)
    dovecot_writes(path, "0 $A\n3 $D\nno-space\n30 $Big\n4 $a\n")
    k = kwfile(path)
    assert k.current()[1] == {0: "$A", 3: "$D"}
    _, by_index = k.learn(["$New"])
    assert by_index == {0: "$A", 1: "$New", 3: "$D"}  # the first free index
    assert read_map(path) == by_index


def test_twenty_seven_keywords_fail_and_write_nothing(tmp_path):
    path = str(tmp_path)
    k = kwfile(path)
    k.learn([f"k{i}" for i in range(25)])
    with pytest.raises(StoreError):
        k.learn(["x1", "x2"])
    assert len(read_map(path)) == 25
    k.learn(["x1"])
    assert len(read_map(path)) == 26


@pytest_twisted.ensureDeferred
async def test_keyword_letter_another_writer_assigned_is_not_given_to_another_keyword(
        tmp_path):
    """Regression (store level, no Dovecot): a folder read dovecot-keywords once, so
    after another writer gave $Work the letter ``a`` and flagged message 1 with it,
    our $Later took ``a`` too and the file was rewritten as ``0 $Later``."""
    root = str(tmp_path / "mail")
    store = MaildirStore(root, fsync=False)
    await deliver(store, MSG)
    await deliver(store, MSG)
    box = await folder_of(store)
    await box.claim_recent()
    home = user_dir(root)
    assert box.get(1).flags == frozenset()  # the folder is loaded and its map read
    first = next(n for n in os.listdir(os.path.join(home, "cur"))
                 if n.partition(":")[0] == box._index.keys[0])
    dovecot_writes(home, "0 $Work\n")
    os.rename(os.path.join(home, "cur", first),
              os.path.join(home, "cur", first.partition(":")[0] + ":2,a"))
    (info,) = await box.set_flags([2], ["$Later"], "add")
    assert info.flags == frozenset({"$Later"})
    assert read_map(home) == {0: "$Work", 1: "$Later"}
    second = next(n for n in os.listdir(os.path.join(home, "cur"))
                  if n.partition(":")[0] == box._index.keys[1])
    assert second.endswith(":2,b")
    await box.refresh()
    assert box.get(1).flags == frozenset({"$Work"})
    await store.close()


@pytest.mark.parametrize("mode", ["inotify", "poll"])
@pytest_twisted.ensureDeferred
async def test_listeners_hear_a_keyword_whose_letter_came_before_the_file(tmp_path, mode):
    """Dovecot renames a file to carry a new letter before it writes dovecot-keywords
    (both under its uidlist lock): the letter is kept verbatim first, and once the file
    names it, listeners hear the message's new FLAGS without any call."""
    root = str(tmp_path / "mail")
    store = MaildirStore(root, fsync=False, watch=mode)
    await deliver(store, MSG)
    box = await folder_of(store)
    await box.claim_recent()
    rec = Recorder()
    box.add_listener(rec)
    await sleep(0.3)
    home = user_dir(root)
    (name,) = os.listdir(os.path.join(home, "cur"))
    os.rename(os.path.join(home, "cur", name),
              os.path.join(home, "cur", name.partition(":")[0] + ":2,Sa"))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not rec.changed:
        await sleep(0.05)
    assert rec.changed[-1].flags == frozenset({"\\Seen"})
    dovecot_writes(home, "0 $Work\n")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and "$Work" not in rec.changed[-1].flags:
        await sleep(0.05)
    assert rec.changed[-1].flags == frozenset({"\\Seen", "$Work"})
    # Unknown letters are avoided while another is free; STORE keeps the letter.
    (info,) = await box.set_flags([1], ["$Later"], "add")
    assert info.flags == frozenset({"\\Seen", "$Work", "$Later"})
    assert read_map(home) == {0: "$Work", 1: "$Later"}
    box.remove_listener(rec)
    await store.close()


@pytest_twisted.ensureDeferred
async def test_a_new_keyword_avoids_letters_file_names_carry_unmapped(tmp_path):
    root = str(tmp_path / "mail")
    store = MaildirStore(root, fsync=False)
    await deliver(store, MSG)
    box = await folder_of(store)
    await box.claim_recent()
    home = user_dir(root)
    (name,) = os.listdir(os.path.join(home, "cur"))
    os.rename(os.path.join(home, "cur", name),
              os.path.join(home, "cur", name.partition(":")[0] + ":2,a"))
    await box.refresh()
    (info,) = await box.set_flags([1], ["$Later"], "add")
    assert info.flags == frozenset({"$Later"})
    assert read_map(home) == {1: "$Later"}
    (name,) = os.listdir(os.path.join(home, "cur"))
    assert name.endswith(":2,ab")  # the unknown letter is kept verbatim
    await store.close()
