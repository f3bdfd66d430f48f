"""RFC 7162 mod-sequences in the store: the contract over every store, and the Maildir
store's journal across restarts, crashes and changes made on disk by others."""

from __future__ import annotations

import os
import time

import pytest_twisted

from mailhost.store._maildir.maildir_modseq import MODSEQ_FILE, RESERVE
from mailhost.store.interfaces import DeliveryTarget
from mailhost.store.maildir import MaildirStore
from tests.store.test_contract import MSG, A, deliver, inbox


async def _three(store):
    for _ in range(3):
        await deliver(store, MSG, DeliveryTarget(A))
    return await inbox(store)


@pytest_twisted.ensureDeferred
async def test_every_change_takes_a_new_modseq(store):
    folder = await inbox(store)
    empty = folder.highest_modseq
    assert empty >= 1  # positive even when empty (RFC 7162 HIGHESTMODSEQ)
    folder = await _three(store)
    mods = {i.uid: i.modseq for i in folder.messages()}
    assert all(m > empty for m in mods.values())
    assert folder.highest_modseq == max(mods.values())
    assert folder.changed_since(empty) == [1, 2, 3]
    before = folder.highest_modseq
    [info] = await folder.set_flags([2], ["\\Seen"], "add")
    assert info.modseq > before == max(mods[1], mods[3])
    assert folder.modseq_of(2) == info.modseq == folder.highest_modseq == folder.get(2).modseq
    assert folder.changed_since(before) == [2]
    # A no-op STORE changes nothing.
    await folder.set_flags([2], ["\\Seen"], "add")
    assert folder.highest_modseq == info.modseq
    await folder.set_flags([1, 3], ["\\Deleted"], "add")
    flagged = folder.highest_modseq
    assert folder.expunged_since(flagged) == []
    assert await folder.expunge() == [1, 3]
    assert folder.highest_modseq > flagged
    assert folder.expunged_since(flagged) == [1, 3]
    assert folder.expunged_since(folder.highest_modseq) == []
    assert folder.modseq_of(1) == 0
    assert folder.changed_since(flagged) == []


@pytest_twisted.ensureDeferred
async def test_copy_and_move_number_the_copies(store):
    folder = await _three(store)
    account = await store.open_account(A)
    sent = await account.open_folder("Sent")
    before = sent.highest_modseq
    await folder.copy([1], sent)
    await folder.move([2], sent)
    assert sent.changed_since(before) == [1, 2]
    assert folder.expunged_since(folder.highest_modseq - 1) == [2]


@pytest_twisted.ensureDeferred
async def test_listeners_see_the_new_modseq(store):
    folder = await _three(store)
    seen = []

    class L:
        def messages_added(self, f, infos):
            pass

        def flags_changed(self, f, infos):
            seen.extend((i.uid, i.modseq) for i in infos)

        def messages_expunged(self, f, uids):
            seen.append(("gone", f.highest_modseq))

    from zope.interface import directlyProvides

    from mailhost.store.interfaces import IFolderListener

    listener = L()
    directlyProvides(listener, IFolderListener)
    folder.add_listener(listener)
    await folder.set_flags([1], ["\\Deleted"], "add")
    await folder.expunge()
    assert seen == [(1, seen[0][1]), ("gone", folder.highest_modseq)]
    assert seen[0][1] < folder.highest_modseq
    folder.remove_listener(listener)


# -- the Maildir journal -------------------------------------------------------------------


def _home(root: str) -> str:
    return os.path.join(root, "example.test", "alice")


@pytest_twisted.ensureDeferred
async def test_restart_keeps_modseqs_and_highest(tmp_path):
    root = str(tmp_path / "mail")
    store = MaildirStore(root, fsync=False)
    folder = await _three(store)
    await folder.set_flags([2], ["\\Flagged"], "add")
    await folder.set_flags([3], ["\\Deleted"], "add")
    await folder.expunge()
    mods = {i.uid: i.modseq for i in folder.messages()}
    highest = folder.highest_modseq
    await store.close()

    again = MaildirStore(root, fsync=False)
    folder = await inbox(again)
    assert {i.uid: i.modseq for i in folder.messages()} == mods
    assert folder.highest_modseq == highest  # a clean close: exactly where it was
    assert folder.expunged_since(highest - 1) == [3]
    await folder.set_flags([1], ["\\Seen"], "add")
    assert folder.modseq_of(1) == highest + 1
    await again.close()


@pytest_twisted.ensureDeferred
async def test_crash_losing_the_journal_tail_never_goes_back(tmp_path):
    """A crash that loses journal lines: what they recorded is found again by comparing
    the files, with numbers above anything given out before (the reservation)."""
    root = str(tmp_path / "mail")
    store = MaildirStore(root, fsync=False)
    folder = await _three(store)
    journal = os.path.join(folder.path, MODSEQ_FILE)
    await folder._journal.write()
    with open(journal) as f:
        kept = f.read()
    await folder.set_flags([2], ["\\Flagged"], "add")
    await folder.set_flags([3], ["\\Deleted"], "add")
    await folder.expunge()
    seen = folder.highest_modseq
    unchanged = folder.modseq_of(1)
    await store.close()
    with open(journal, "w") as f:  # the crash: only what was written before survives
        f.write(kept)

    again = MaildirStore(root, fsync=False)
    folder = await inbox(again)
    assert folder.highest_modseq > seen
    assert folder.modseq_of(1) == unchanged
    assert folder.modseq_of(2) > seen  # its flag change, found on disk
    assert folder.expunged_since(seen) == [3]  # its expunge, found missing
    assert folder.highest_modseq <= seen + RESERVE + 2
    await again.close()


@pytest_twisted.ensureDeferred
async def test_changes_on_disk_get_new_modseqs(tmp_path):
    """Another program (mutt, Dovecot) renames a file to set a flag, or deletes one:
    seen by a refresh while running, or at the next load after a restart, each gets a
    new modseq."""
    root = str(tmp_path / "mail")
    store = MaildirStore(root, fsync=False)
    folder = await _three(store)
    await folder.claim_recent()
    cur = os.path.join(folder.path, "cur")

    def rename_with(uid: int, letters: str) -> None:
        key = folder.get(uid).key
        [name] = [n for n in os.listdir(cur) if n.startswith(key)]
        os.rename(os.path.join(cur, name), os.path.join(cur, f"{key}:2,{letters}"))

    before = folder.highest_modseq
    rename_with(1, "F")
    await folder._run(folder._rescan.rescan, True)
    assert folder.get(1).flags == frozenset({"\\Flagged"})
    assert folder.modseq_of(1) > before
    running = folder.highest_modseq
    await store.close()

    rename_with(2, "S")  # while mailhost is down
    key3 = folder.get(3).key
    [name3] = [n for n in os.listdir(cur) if n.startswith(key3)]
    os.unlink(os.path.join(cur, name3))
    again = MaildirStore(root, fsync=False)
    folder = await inbox(again)
    assert folder.get(2).flags == frozenset({"\\Seen"})
    assert folder.modseq_of(2) > running
    assert folder.expunged_since(running) == [3]
    assert folder.modseq_of(1) <= running  # unchanged since
    await again.close()


@pytest_twisted.ensureDeferred
async def test_reservation_is_renewed_before_it_runs_out(tmp_path):
    root = str(tmp_path / "mail")
    store = MaildirStore(root, fsync=False)
    folder = await _three(store)
    first = folder._journal.reserved
    folder._modseqs.highest = first - RESERVE // 2  # as if many changes went by
    await folder.set_flags([1], ["\\Seen"], "add")
    assert folder._journal.reserved > first
    await folder._journal.write()
    with open(os.path.join(folder.path, MODSEQ_FILE)) as f:
        assert f"R {folder._journal.reserved}\n" in f.read()
    await store.close()


@pytest_twisted.ensureDeferred
async def test_journal_is_compacted_while_running(tmp_path):
    """Appends that outgrow the state they describe are replaced by the state, written
    whole; a restart then reads the same modseqs."""
    root = str(tmp_path / "mail")
    store = MaildirStore(root, fsync=False)
    folder = await _three(store)
    for i in range(40):
        await folder.set_flags([1 + i % 3], ["\\Seen"], "add" if i % 2 else "remove")
    await folder.set_flags([2], ["\\Deleted"], "add")
    await folder.expunge()
    folder._journal._appended = 10**6  # as if it had grown for long
    await folder._journal.write()
    with open(os.path.join(folder.path, MODSEQ_FILE)) as f:
        text = f.read()
    assert len(text.splitlines()) <= 5, text  # header, R, one G, at most two S
    mods = {i.uid: i.modseq for i in folder.messages()}
    highest, gone = folder.highest_modseq, folder.expunged_since(0)
    await store.close()
    again = MaildirStore(root, fsync=False)
    folder = await inbox(again)
    assert {i.uid: i.modseq for i in folder.messages()} == mods
    assert folder.highest_modseq == highest and folder.expunged_since(0) == gone == [2]
    await again.close()


@pytest_twisted.ensureDeferred
async def test_lost_journal_never_goes_back(tmp_path):
    """The journal deleted (or a backup restored without it): numbering starts above
    anything it had given out, like UIDVALIDITY from the clock."""
    root = str(tmp_path / "mail")
    store = MaildirStore(root, fsync=False)
    folder = await _three(store)
    await folder.set_flags([2], ["\\Seen"], "add")
    seen = folder.highest_modseq
    await store.close()
    os.unlink(os.path.join(folder.path, MODSEQ_FILE))
    again = MaildirStore(root, fsync=False)
    folder = await inbox(again)
    assert min(i.modseq for i in folder.messages()) > seen
    assert folder.highest_modseq > seen
    await again.close()


def test_two_processes_with_the_modseq_clock_agree_in_order():
    """server.workers: a change one process numbers after a client saw HIGHESTMODSEQ in
    another is above it, however far the other's own counter had run ahead (without
    the clock it would be 2, below the 1001 the client knows)."""
    from mailhost.store.modseq import CLOCK_MARGIN, ModSeqs, time_clock

    ahead, behind = ModSeqs(), ModSeqs()
    ahead.clock = behind.clock = time_clock
    for _ in range(1000):
        ahead.touch([1])
    seen = ahead.highest  # may run a little ahead of the clock: the margin covers it
    behind.touch([2])
    assert behind.changed_since(seen) == [2]
    time.sleep(0.01)
    assert behind.touch([4]) > seen
    # and a change numbered a little before ``seen`` (seen on disk late) is reported
    behind.by_uid[3] = seen - CLOCK_MARGIN // 2
    assert behind.changed_since(seen) == [2, 3, 4]


@pytest_twisted.ensureDeferred
async def test_modseq_clock_store_numbers_from_the_time(tmp_path):
    from mailhost.store.modseq import time_clock

    store = MaildirStore(str(tmp_path / "mail"), fsync=False, modseq_clock=time_clock)
    folder = await _three(store)
    before = time_clock()
    await folder.set_flags([2], ["\\Seen"], "add")
    assert folder.modseq_of(2) >= before
    await store.close()
