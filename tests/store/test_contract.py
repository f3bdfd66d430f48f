"""The IMailStore contract, run against MemoryStore, MaildirStore and DictStore alike.

It covers everything a protocol uses of a store (IMAP, POP3, SMTP delivery, the
outbound service's local delivery): DictStore, written in tests/store/dictstore.py
from the contract alone, passes it and serves all three protocols
(tests/e2e/test_foreign_store.py)."""

from __future__ import annotations

import gc
import os
import tracemalloc

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from zope.interface.verify import verifyObject

from mailhost.store.interfaces import (
    DEFAULT_SPECIAL_FOLDERS,
    DeliveryTarget,
    FolderExists,
    IFolder,
    IFolderListener,
    IIndexedFolder,
    IMailAccount,
    IMailStore,
    IMessageReader,
    IMessageWriter,
    InvalidFolderName,
    NoSuchFolder,
    NoSuchMessage,
    StoreError,
)
from mailhost.store.maildir import MaildirStore
from mailhost.store.reader import read_all as read_reader
from tests.store.conftest import Recorder

A = "alice@example.test"
B = "bob@example.test"
MSG = b"From: x@example.test\r\nSubject: hi\r\n\r\nbody\r\n"


async def deliver(store, data=MSG, *targets, chunks=None):
    w = store.new_message()
    for part in chunks or [data]:
        w.write(part)
    return await w.commit(list(targets) or [DeliveryTarget(A)])


async def read_all(folder, uid, chunk=65536):
    f = await folder.open_message(uid)
    try:
        out = bytearray()
        while part := f.read(chunk):
            out += part
        return bytes(out)
    finally:
        f.close()


async def inbox(store, user=A):
    account = await store.open_account(user)
    return await account.open_folder("INBOX")


@pytest_twisted.ensureDeferred
async def test_interfaces_verified(store):
    assert verifyObject(IMailStore, store)
    account = await store.open_account(A)
    assert verifyObject(IMailAccount, account)
    folder = await account.open_folder("INBOX")
    assert verifyObject(IFolder, folder)
    w = store.new_message()
    assert verifyObject(IMessageWriter, w)
    w.abort()
    assert verifyObject(IFolderListener, Recorder())


@pytest_twisted.ensureDeferred
async def test_new_account_has_inbox_and_special_folders(store):
    account = await store.open_account(A)
    assert await account.list_folders() == ["INBOX", "Drafts", "Junk", "Sent", "Trash"]
    for name, use in DEFAULT_SPECIAL_FOLDERS.items():
        assert (await account.open_folder(name)).special_use == use
    assert (await account.open_folder("inbox")).special_use is None
    assert (await account.open_folder("InBox")).name == "INBOX"
    assert "INBOX" in await account.subscriptions()


@pytest_twisted.ensureDeferred
async def test_commit_to_several_targets(store):
    uids = await deliver(store, MSG, DeliveryTarget(A), DeliveryTarget(B),
                         DeliveryTarget(A, "Sent", frozenset({"\\Seen"})))
    assert uids == [1, 1, 1]
    a, b = await inbox(store, A), await inbox(store, B)
    sent = await (await store.open_account(A)).open_folder("Sent")
    for folder in (a, b, sent):
        [info] = folder.messages()
        assert info.size == len(MSG)
        assert await read_all(folder, info.uid) == MSG
        assert info.recent
    assert sent.messages()[0].flags == {"\\Seen"}
    assert a.messages()[0].flags == frozenset()
    assert a.messages()[0].key != b.messages()[0].key or a is not b


@pytest_twisted.ensureDeferred
async def test_uids_monotonic_and_uid_next(store):
    folder = await inbox(store)
    start = folder.uid_next
    got = []
    for _ in range(5):
        got += await deliver(store)
    assert got == list(range(start, start + 5))
    assert folder.uid_next == start + 5
    assert [i.uid for i in folder.messages()] == got
    assert folder.get(got[2]).uid == got[2]
    assert folder.get(999) is None


@pytest_twisted.ensureDeferred
async def test_concurrent_commits_visible_in_uid_order(store, recorder):
    folder = await inbox(store)
    folder.add_listener(recorder)
    writers = []
    for i in range(20):
        w = store.new_message()
        w.write(MSG + str(i).encode())
        writers.append(w)
    results = await defer.gatherResults([w.commit([DeliveryTarget(A)]) for w in writers])
    uids = [r[0] for r in results]
    assert sorted(uids) == list(range(1, 21))
    seen = [u for kind, us in recorder.events if kind == "added" for u in us]
    assert seen == list(range(1, 21))
    assert [i.uid for i in folder.messages()] == list(range(1, 21))
    for i, uid in enumerate(uids):
        assert await read_all(folder, uid) == MSG + str(i).encode()


@pytest_twisted.ensureDeferred
async def test_commit_to_missing_folder_fails(store):
    with pytest.raises(NoSuchFolder):
        await deliver(store, MSG, DeliveryTarget(A, "Nope"))
    assert (await inbox(store)).messages() == []


@pytest_twisted.ensureDeferred
async def test_crlf_normalisation(store):
    cases = [
        ([b"a\nb\n"], b"a\r\nb\r\n"),
        ([b"a\r", b"\nb"], b"a\r\nb"),  # CR LF split across writes
        ([b"a\r", b"\r\n"], b"a\r\r\n"),  # bare CR kept
        ([b"a\r\n", b"\n"], b"a\r\n\r\n"),
        ([b"\n", b"\n", b"x"], b"\r\n\r\nx"),
        ([b"a\r", b"", b"\nb"], b"a\r\nb"),
    ]
    folder = await inbox(store)
    for chunks, want in cases:
        w = store.new_message()
        for c in chunks:
            w.write(c)
        assert w.size == len(want)
        [uid] = await w.commit([DeliveryTarget(A)])
        assert folder.get(uid).size == len(want)
        assert await read_all(folder, uid) == want, chunks


@pytest_twisted.ensureDeferred
async def test_abort_leaves_nothing(store, tmp_path):
    w = store.new_message()
    w.write(MSG)
    w.abort()
    w.abort()
    with pytest.raises(StoreError):
        w.write(b"more")
    folder = await inbox(store)
    assert folder.messages() == []
    w2 = store.new_message()
    w2.write(MSG)
    await w2.commit([DeliveryTarget(A)])
    w2.abort()  # safe after commit
    assert len(folder.messages()) == 1
    if isinstance(store, MaildirStore):
        assert os.listdir(os.path.join(store.root, ".tmp")) == []


@pytest_twisted.ensureDeferred
async def test_flags_add_remove_replace_and_events(store, recorder):
    await deliver(store)
    await deliver(store)
    folder = await inbox(store)
    folder.add_listener(recorder)
    infos = await folder.set_flags([1, 2, 77], ["\\Seen", "\\flagged", "Work"], "add")
    assert [i.uid for i in infos] == [1, 2]
    assert all(i.flags == {"\\Seen", "\\Flagged", "Work"} for i in infos)
    infos = await folder.set_flags([1], ["\\Flagged"], "remove")
    assert infos[0].flags == {"\\Seen", "Work"}
    infos = await folder.set_flags([2], ["\\Answered", "\\Recent"], "replace")
    assert infos[0].flags == {"\\Answered"}
    assert folder.get(2).flags == {"\\Answered"}
    await folder.set_flags([2], ["\\Answered"], "add")  # no change -> no event
    assert recorder.events == [
        ("flags", {1: {"\\Seen", "\\Flagged", "Work"}, 2: {"\\Seen", "\\Flagged", "Work"}}),
        ("flags", {1: {"\\Seen", "Work"}}),
        ("flags", {2: {"\\Answered"}}),
    ]
    folder.remove_listener(recorder)
    await folder.set_flags([1], [], "replace")
    assert len(recorder.events) == 3
    assert await read_all(folder, 1) == MSG


@pytest_twisted.ensureDeferred
async def test_listener_hears_other_sessions(store, recorder):
    first = await inbox(store)
    first.add_listener(recorder)
    second = await (await store.open_account(A)).open_folder("INBOX")
    assert second is first  # one live object per (user, folder)
    await deliver(store)
    await second.set_flags([1], ["\\Deleted"], "add")
    await second.expunge()
    assert [k for k, _ in recorder.events] == ["added", "flags", "expunged"]


@pytest_twisted.ensureDeferred
async def test_expunge(store, recorder):
    for _ in range(4):
        await deliver(store)
    folder = await inbox(store)
    folder.add_listener(recorder)
    await folder.set_flags([1, 2, 4], ["\\Deleted"], "add")
    assert await folder.expunge([2, 3, 4]) == [2, 4]
    assert [i.uid for i in folder.messages()] == [1, 3]
    assert await folder.expunge() == [1]
    assert await folder.expunge() == []
    assert [i.uid for i in folder.messages()] == [3]
    assert recorder.events[-2:] == [("expunged", [2, 4]), ("expunged", [1])]
    with pytest.raises(NoSuchMessage):
        await folder.open_message(1)


@pytest_twisted.ensureDeferred
async def test_copy_keeps_flags(store, recorder):
    await deliver(store)
    await deliver(store)
    account = await store.open_account(A)
    src = await account.open_folder("INBOX")
    dest = await account.open_folder("Trash")
    dest.add_listener(recorder)
    await src.set_flags([2], ["\\Seen", "kw"], "add")
    pairs = await src.copy([2, 1, 99], dest)
    assert pairs == [(1, 1), (2, 2)]
    assert dest.get(2).flags == {"\\Seen", "kw"}
    assert dest.get(1).recent
    assert await read_all(dest, 2) == MSG
    assert len(src.messages()) == 2
    assert recorder.events == [("added", [1, 2])]
    # copies are independent
    await dest.set_flags([2], ["\\Deleted"], "add")
    await dest.expunge()
    assert await read_all(src, 2) == MSG
    assert src.get(2).flags == {"\\Seen", "kw"}


@pytest_twisted.ensureDeferred
async def test_move(store):
    await deliver(store)
    await deliver(store)
    account = await store.open_account(A)
    src = await account.open_folder("INBOX")
    dest = await account.open_folder("Junk")
    r_src, r_dest = Recorder(), Recorder()
    src.add_listener(r_src)
    dest.add_listener(r_dest)
    await src.set_flags([1], ["\\Flagged"], "add")
    assert await src.move([1], dest) == [(1, 1)]
    assert [i.uid for i in src.messages()] == [2]
    assert dest.get(1).flags == {"\\Flagged"}
    assert await read_all(dest, 1) == MSG
    assert r_src.events[-1] == ("expunged", [1])
    assert r_dest.events == [("added", [1])]


@pytest_twisted.ensureDeferred
async def test_claim_recent(store):
    await deliver(store)
    await deliver(store)
    folder = await inbox(store)
    assert await folder.claim_recent() == {1, 2}
    assert await folder.claim_recent() == set()
    assert not any(i.recent for i in folder.messages())
    await folder.set_flags([1], ["\\Seen"], "add")
    await deliver(store)
    assert await folder.claim_recent() == {3}
    assert folder.get(1).flags == {"\\Seen"}
    assert await read_all(folder, 1) == MSG


@pytest_twisted.ensureDeferred
async def test_folder_create_delete(store):
    account = await store.open_account(A)
    await account.create_folder("Archive.2024.Q1")
    names = await account.list_folders()
    assert {"Archive", "Archive.2024", "Archive.2024.Q1"} <= set(names)
    assert names[0] == "INBOX" and names[1:] == sorted(names[1:])
    with pytest.raises(FolderExists):
        await account.create_folder("Archive.2024")
    with pytest.raises(FolderExists):
        await account.create_folder("inbox")
    await account.create_folder("Lists", special_use="\\Archive")
    assert (await account.open_folder("Lists")).special_use == "\\Archive"
    folder = await account.open_folder("Archive.2024")
    rec = Recorder()
    folder.add_listener(rec)
    await deliver(store, MSG, DeliveryTarget(A, "Archive.2024"))
    await account.delete_folder("Archive.2024")
    assert rec.events[-1] == ("expunged", [1])
    assert "Archive.2024" not in await account.list_folders()
    assert "Archive.2024.Q1" in await account.list_folders()  # inferiors survive
    with pytest.raises(NoSuchFolder):
        await account.open_folder("Archive.2024")
    with pytest.raises(NoSuchFolder):
        await account.delete_folder("Archive.2024")
    with pytest.raises(InvalidFolderName):
        await account.delete_folder("INBOX")
    # recreated folder gets a new UIDVALIDITY
    await account.create_folder("Archive.2024")
    again = await account.open_folder("Archive.2024")
    assert again.uid_validity != folder.uid_validity
    assert again.messages() == []


@pytest_twisted.ensureDeferred
async def test_folder_rename_with_children(store):
    account = await store.open_account(A)
    await account.create_folder("Work.Projects.X")
    await deliver(store, MSG, DeliveryTarget(A, "Work.Projects"))
    folder = await account.open_folder("Work.Projects")
    validity = folder.uid_validity
    await account.rename_folder("Work", "Job")
    names = await account.list_folders()
    assert {"Job", "Job.Projects", "Job.Projects.X"} <= set(names)
    assert not any(n.startswith("Work") for n in names)
    moved = await account.open_folder("Job.Projects")
    assert moved is folder and moved.name == "Job.Projects"
    assert moved.uid_validity == validity
    assert await read_all(moved, 1) == MSG
    with pytest.raises(FolderExists):
        await account.rename_folder("Job", "Sent")
    with pytest.raises(NoSuchFolder):
        await account.rename_folder("Nope", "Other")
    with pytest.raises(InvalidFolderName):
        await account.rename_folder("Job", "Job.Sub")
    await account.rename_folder("Sent", "Sent Items")
    assert (await account.open_folder("Sent Items")).special_use == "\\Sent"


@pytest_twisted.ensureDeferred
async def test_rename_inbox_moves_messages(store):
    account = await store.open_account(A)
    await deliver(store)
    await deliver(store)
    box = await account.open_folder("INBOX")
    await box.set_flags([2], ["\\Seen"], "add")
    await account.rename_folder("INBOX", "Old Mail")
    assert box.messages() == []
    assert "INBOX" in await account.list_folders()
    old = await account.open_folder("Old Mail")
    assert [i.flags for i in old.messages()] == [frozenset(), {"\\Seen"}]
    assert await read_all(old, 2) == MSG
    await deliver(store)
    assert len(box.messages()) == 1


@pytest_twisted.ensureDeferred
async def test_subscriptions(store):
    account = await store.open_account(A)
    await account.subscribe("Lists.Python")  # need not exist
    await account.subscribe("inbox")
    subs = await account.subscriptions()
    assert {"INBOX", "Lists.Python"} <= subs
    await account.unsubscribe("Lists.Python")
    await account.unsubscribe("Never")
    assert "Lists.Python" not in await account.subscriptions()
    with pytest.raises(InvalidFolderName):
        await account.subscribe("../x")


BAD_NAMES = ["", ".", "..", "a..b", ".hidden", "trailing.", "a/b", "a\\b", "../../etc",
             "x\x00y", "tab\there", "del\x7f", "a" * 300]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest_twisted.ensureDeferred
async def test_bad_folder_names_refused(store, name):
    account = await store.open_account(A)
    with pytest.raises(InvalidFolderName):
        await account.create_folder(name)
    with pytest.raises(InvalidFolderName):
        await account.open_folder(name)
    with pytest.raises(InvalidFolderName):
        await account.rename_folder("Sent", name)
    with pytest.raises(StoreError):
        await deliver(store, MSG, DeliveryTarget(A, name))


@pytest.mark.parametrize("user", ["../evil@example.test", "a@..", "a/b@example.test",
                                  "a@b/c", "noat", "a@b@c", "@example.test", "a@",
                                  ".x@example.test", "a\x00@example.test"])
@pytest_twisted.ensureDeferred
async def test_bad_user_names_refused(store, user):
    with pytest.raises(StoreError):
        await store.open_account(user)
    with pytest.raises(StoreError):
        await deliver(store, MSG, DeliveryTarget(user))


@pytest_twisted.ensureDeferred
async def test_cached_metadata(store):
    await deliver(store)
    folder = await inbox(store)
    assert folder.get_cached(1, "envelope") is None
    folder.set_cached(1, "envelope", '("x" NIL)\n\t"ü"')
    folder.set_cached(42, "envelope", "ignored")
    assert folder.get_cached(1, "envelope") == '("x" NIL)\n\t"ü"'
    assert folder.get_cached(42, "envelope") is None
    await folder.set_flags([1], ["\\Deleted"], "add")
    await folder.expunge()
    assert folder.get_cached(1, "envelope") is None


@pytest_twisted.ensureDeferred
async def test_open_message_is_independent_and_seekable(store):
    body = b"".join(b"line %06d\r\n" % i for i in range(200_000))  # > spool threshold
    await deliver(store, body)
    folder = await inbox(store)
    f1 = await folder.open_message(1)
    f2 = await folder.open_message(1)
    try:
        assert f1.read(10) == body[:10]
        assert f2.read(20) == body[:20]
        assert f1.read(10) == body[10:20]
        f1.seek(1000)
        assert f1.read(5) == body[1000:1005]
    finally:
        f1.close()
        f2.close()


@pytest_twisted.ensureDeferred
async def test_20mb_message_streams_in_bounded_memory(store):
    chunk = (b"x" * 76 + b"\n") * 840  # ~64 KiB of LF lines, normalised on write
    total_chunks = 20 * 1024 * 1024 // len(chunk) + 1
    expected = len(chunk.replace(b"\n", b"\r\n")) * total_chunks
    gc.collect()
    tracemalloc.start()
    try:
        w = store.new_message()
        for _ in range(total_chunks):
            w.write(chunk)
        assert w.size == expected
        await w.commit([DeliveryTarget(A)])
        folder = await inbox(store)
        assert folder.get(1).size == expected
        f = await folder.open_message(1)
        line = b"x" * 76 + b"\r\n"
        pattern = line * (64 * 1024 // len(line) + 2)
        n = 0
        while part := f.read(64 * 1024):
            off = n % len(line)
            assert part == pattern[off:off + len(part)]
            n += len(part)
        f.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == expected
    assert peak < 4 * 1024 * 1024, peak


# -- what the protocols use beyond the basics -------------------------------------------


@pytest_twisted.ensureDeferred
async def test_read_message_streams_ranges_in_bounded_chunks(store):
    """IMAP FETCH, POP3 RETR, SEARCH: every read goes through IFolder.read_message."""
    big = b"".join(b"line %07d\r\n" % i for i in range(100_000))  # 1.3 MB
    small = MSG
    await deliver(store, small)
    await deliver(store, big)
    folder = await inbox(store)
    reader = await folder.read_message(1)
    assert verifyObject(IMessageReader, reader)
    assert reader.size == len(small)
    assert await read_reader(reader) == small
    reader = await folder.read_message(2)
    chunks = []
    while chunk := await reader.read():
        assert len(chunk) <= 256 * 1024
        chunks.append(chunk)
    reader.close()
    assert b"".join(chunks) == big and len(chunks) > 1
    for offset, length in [(0, 10), (5, 100), (70_000, 70_000), (len(big) - 3, 10),
                           (len(big) + 5, 10), (1000, None)]:
        reader = await folder.read_message(2, offset, length)
        want = big[offset:] if length is None else big[offset:offset + length]
        assert reader.size == len(want)
        assert await read_reader(reader) == want, (offset, length)
    with pytest.raises(NoSuchMessage):
        await folder.read_message(99)


@pytest_twisted.ensureDeferred
async def test_reader_call_runs_a_parser_on_the_message(store):
    """The MIME scan and SEARCH read the message their own way, off the reactor."""
    await deliver(store, MSG)
    folder = await inbox(store)
    reader = await folder.read_message(1, 6)
    try:
        head = await reader.call(lambda f, n: f.read(n), 13)
    finally:
        reader.close()
    assert head == MSG[6:19]


@pytest_twisted.ensureDeferred
async def test_append_recent_to_no_one_else(store, recorder):
    """``recent=False`` (an IMAP session appending to the folder it has selected, which
    shows the \\Recent itself): no other session sees the message recent, and no
    claim finds it; its flags, date and body are kept as usual. Issue 16."""
    account = await store.open_account(A)
    folder = await account.open_folder("INBOX")
    folder.add_listener(recorder)
    writer = account.new_message()
    writer.write(MSG)
    _, uid = await account.append("INBOX", writer, ["\\Seen"], 837570205.0, recent=False)
    await folder.refresh()
    info = folder.get(uid)
    assert not info.recent
    assert info.flags == {"\\Seen"} and info.internal_date == 837570205.0
    assert await folder.claim_recent() == set()
    assert await read_all(folder, uid) == MSG
    assert recorder.events == [("added", [uid])]
    await deliver(store)  # a delivery stays recent for the first to claim it
    await folder.refresh()
    assert await folder.claim_recent() == {uid + 1}
    if isinstance(store, MaildirStore):  # saved where a claim would have renamed it to
        home = os.path.join(store.root, "example.test", "alice")
        assert len(os.listdir(os.path.join(home, "cur"))) == 2
        assert os.listdir(os.path.join(home, "new")) == []


@pytest_twisted.ensureDeferred
async def test_append_on_the_account(store, recorder):
    """IMAP APPEND: through the account, the session's one route to the store."""
    account = await store.open_account(A)
    sent = await account.open_folder("Sent")
    sent.add_listener(recorder)
    writer = account.new_message()
    assert verifyObject(IMessageWriter, writer)
    writer.write(MSG)
    validity, uid = await account.append("Sent", writer, ["\\Seen", "Work"], 837570205.0)
    assert (validity, uid) == (sent.uid_validity, 1)
    info = sent.get(1)
    assert info.flags == {"\\Seen", "Work"} and info.internal_date == 837570205.0
    assert await read_all(sent, 1) == MSG
    assert recorder.events == [("added", [1])]
    doomed = account.new_message()
    doomed.write(MSG)
    with pytest.raises(NoSuchFolder):
        await account.append("Nope", doomed)
    with pytest.raises(StoreError):  # thrown away: NoSuchFolder aborted it
        doomed.write(b"more")
    big = account.new_message()
    body = b"x" * (2 * 1024 * 1024)
    for i in range(0, len(body), 65536):
        big.write(body[i:i + 65536])
    _, uid = await account.append("INBOX", big)
    assert (await inbox(store)).get(uid).size == len(body)


@pytest_twisted.ensureDeferred
async def test_refresh_is_not_held_by_a_claim_in_flight(store, hold_claims):
    """Issue 16: under a 10-client IMAP load most NOOPs waited for the folder lock
    behind another session's \\Recent claim. A claim takes effect when it is made:
    while its own work (a rename, an UPDATE) is held up, every look at the folder
    already shows the messages old, a second claim gets none of them, and a refresh
    fires. (The bound only turns a hang into a failure; nothing here is timed.)"""
    folder = await inbox(store)
    folder.add_listener(Recorder())  # as a selected IMAP session does
    await folder.refresh()
    await deliver(store)
    await deliver(store)
    await folder.refresh()
    assert [i.recent for i in folder.messages()] == [True, True]
    release = await hold_claims(store, folder)
    try:
        claim = folder.claim_recent()
        assert not any(i.recent for i in folder.messages())
        assert not folder.get(1).recent and not folder.get(2).recent
        if IIndexedFolder.providedBy(folder):
            assert not any(folder.columns().recent)
        second = folder.claim_recent()  # another session: nothing is left for it
        await folder.refresh().addTimeout(30, reactor)
        assert not any(i.recent for i in folder.messages())
    finally:
        release()
    assert await claim == {1, 2}
    assert await second == set()
    assert not any(i.recent for i in folder.messages())
    await deliver(store)
    assert await folder.claim_recent() == {3}


@pytest_twisted.ensureDeferred
async def test_delivery_wanting_no_uid_is_seen_after_refresh(store):
    """SMTP delivers with want_uid=False; a client that got the 250 and then looks
    (POP3 login, IMAP SELECT refresh) finds the message."""
    folder = await inbox(store)
    got = await deliver(store, MSG, DeliveryTarget(A, want_uid=False))
    assert got[0] is None or isinstance(got[0], int)
    await folder.refresh()
    [info] = folder.messages()
    assert await read_all(folder, info.uid) == MSG
    assert folder.uid_next > info.uid


@pytest_twisted.ensureDeferred
async def test_indexed_folder_columns_agree_with_messages(store):
    """IIndexedFolder is optional; where a store declares it, its columns are the
    index that messages() gives, and fill_dates() fires."""
    await deliver(store, MSG, DeliveryTarget(A, internal_date=1_000_000.0))
    await deliver(store, MSG + b"x", DeliveryTarget(A, flags=frozenset({"\\Seen"})))
    folder = await inbox(store)
    await folder.claim_recent()
    await deliver(store)
    if not IIndexedFolder.providedBy(folder):
        return
    assert verifyObject(IIndexedFolder, folder)
    await folder.fill_dates()
    await folder.fill_dates([1])
    cols = folder.columns()
    infos = folder.messages()
    assert list(cols.uids) == [i.uid for i in infos]
    assert list(cols.flags) == [i.flags for i in infos]
    assert [bool(r) for r in cols.recent] == [i.recent for i in infos]
    assert list(cols.sizes) == [i.size for i in infos]
    assert list(cols.dates) == [i.internal_date for i in infos]
    assert cols.dates[0] == 1_000_000.0


@pytest_twisted.ensureDeferred
async def test_folder_attributes_protocols_show(store):
    """STATUS, SELECT and UIDL show these: stable while nothing changes."""
    account = await store.open_account(A)
    folder = await account.open_folder("INBOX")
    validity, next_uid = folder.uid_validity, folder.uid_next
    assert isinstance(validity, int) and validity > 0 and next_uid == 1
    assert folder.name == "INBOX" and folder.special_use is None
    await folder.refresh()
    again = await (await store.open_account(A)).open_folder("inbox")
    assert again.uid_validity == validity
    await deliver(store)
    assert folder.uid_next == 2
    await store.close()
