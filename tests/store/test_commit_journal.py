"""One message for several folders is committed as one unit (issue 17, item 15).

The crash itself is tested against a real twistd in
tests/e2e/test_crash_multi_recipient.py; here each state a crash can leave behind is
made by hand (or by a failing system call) and the store's recovery is checked.
"""

from __future__ import annotations

import fcntl
import json
import os

import pytest
import pytest_twisted

from mailhost.store._maildir import maildir_io
from mailhost.store.interfaces import DeliveryTarget
from mailhost.store.maildir import TMP_DIR, MaildirStore

USERS = ["a@example.test", "b@example.test", "c@example.test"]
MSG = b"From: x@example.test\r\nSubject: unit\r\n\r\nbody\r\n"


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "mail")


def inbox(root: str, user: str) -> str:
    local, domain = user.split("@")
    return os.path.join(root, domain, local)


def files(root: str, user: str, sub: str) -> list[str]:
    try:
        return sorted(os.listdir(os.path.join(inbox(root, user), sub)))
    except FileNotFoundError:
        return []


async def deliver(store, users=USERS):
    w = store.new_message()
    w.write(MSG)
    return await w.commit([DeliveryTarget(u, want_uid=False) for u in users])


def crashed_commit(root: str, committed: bool, renamed: int = 0, torn: bool = False) -> str:
    """The state a kill -9 leaves inside ``_commit_all``: the journal, the tmp file,
    links in every tmp/, ``renamed`` of them already in new/. Returns the name."""
    tmp_dir = os.path.join(root, TMP_DIR)
    os.makedirs(tmp_dir, exist_ok=True)
    name = "1700000000.M1P1Q1.host,S=%d,W=%d" % (len(MSG), len(MSG))
    data = os.path.join(tmp_dir, "1700000000.M1P1Q1.host")
    with open(data, "wb") as f:
        f.write(MSG)
    pairs = []
    for user in USERS:
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(inbox(root, user), sub), exist_ok=True)
        pairs.append((os.path.join(inbox(root, user), "tmp", name),
                      os.path.join(inbox(root, user), "new", name)))
        os.link(data, pairs[-1][0])
    text = b"mailhost-commit 1\n" + b"".join(json.dumps(p).encode() + b"\n" for p in pairs)
    if committed:
        text += b"commit\n"
    if torn:
        text += b'["half a line'
    with open(data + maildir_io.JOURNAL_SUFFIX, "wb") as f:
        f.write(text)
    for tmp, new in pairs[:renamed]:
        os.rename(tmp, new)
    return name


async def messages(store, user: str) -> int:
    folder = await (await store.open_account(user)).open_folder("INBOX")
    return len(folder.messages())


@pytest_twisted.ensureDeferred
async def test_a_multi_folder_delivery_leaves_no_journal_and_no_tmp_link(root):
    store = MaildirStore(root)
    await deliver(store)
    for user in USERS:
        assert len(files(root, user, "new")) == 1 and files(root, user, "tmp") == []
        assert await messages(store, user) == 1
    assert os.listdir(os.path.join(root, TMP_DIR)) == []
    await store.close()


@pytest.mark.parametrize("renamed", [0, 1, 3])
@pytest.mark.parametrize("fsync", [True, False])
@pytest_twisted.ensureDeferred
async def test_a_committed_journal_is_rolled_forward_before_any_account_opens(
        root, renamed, fsync):
    name = crashed_commit(root, committed=True, renamed=renamed)
    store = MaildirStore(root, fsync=fsync)
    for user in USERS:
        assert await messages(store, user) == 1  # every copy, numbered like any new mail
        assert files(root, user, "new") == [name] and files(root, user, "tmp") == []
    assert os.listdir(os.path.join(root, TMP_DIR)) == []
    await store.close()


@pytest.mark.parametrize("torn", [False, True])
@pytest_twisted.ensureDeferred
async def test_an_uncommitted_journal_is_rolled_back(root, torn):
    crashed_commit(root, committed=False, torn=torn)
    store = MaildirStore(root)
    for user in USERS:
        assert await messages(store, user) == 0
        assert files(root, user, "tmp") == [] and files(root, user, "new") == []
    assert os.listdir(os.path.join(root, TMP_DIR)) == []
    await store.close()


def test_a_journal_its_writer_still_holds_is_left_alone(root):
    name = crashed_commit(root, committed=False)
    tmp_dir = os.path.join(root, TMP_DIR)
    journal = [n for n in os.listdir(tmp_dir) if n.endswith(maildir_io.JOURNAL_SUFFIX)][0]
    fd = os.open(os.path.join(tmp_dir, journal), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as _commit_all holds it while it works
        assert maildir_io.recover_commits(tmp_dir, None) == []
        assert files(root, USERS[0], "tmp") == [name]
    finally:
        os.close(fd)
    assert [forward for _, forward, _ in maildir_io.recover_commits(tmp_dir, None)] == [False]
    assert files(root, USERS[0], "tmp") == []


@pytest_twisted.ensureDeferred
async def test_a_failure_before_the_commit_point_takes_every_copy_back(root, monkeypatch):
    store = MaildirStore(root)
    await deliver(store)  # every Maildir exists
    real = maildir_io.link_or_copy
    calls = []

    def failing(src, dest, fsync, modes):
        calls.append(dest)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(src, dest, fsync, modes)

    monkeypatch.setattr(maildir_io, "link_or_copy", failing)
    with pytest.raises(OSError):
        await deliver(store)
    for user in USERS:
        assert len(files(root, user, "new")) == 1 and files(root, user, "tmp") == []
    assert os.listdir(os.path.join(root, TMP_DIR)) == []
    await store.close()


@pytest_twisted.ensureDeferred
async def test_a_failure_after_the_commit_point_is_finished_at_the_next_start(
        root, monkeypatch):
    store = MaildirStore(root)
    await deliver(store)
    real = os.rename
    calls = []

    def failing(src, dest):
        calls.append(dest)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return real(src, dest)

    monkeypatch.setattr(maildir_io.os, "rename", failing)
    with pytest.raises(OSError):
        await deliver(store)
    monkeypatch.setattr(maildir_io.os, "rename", real)
    await store.close()
    assert [len(files(root, u, "new")) for u in USERS] == [2, 1, 1]
    store = MaildirStore(root)
    for user in USERS:
        assert await messages(store, user) == 2
    await store.close()


def test_the_tmp_cleaner_never_ages_out_a_journal(root):
    crashed_commit(root, committed=True)
    tmp_dir = os.path.join(root, TMP_DIR)
    for name in os.listdir(tmp_dir):
        os.utime(os.path.join(tmp_dir, name), (1, 1))
    maildir_io.clean_tmp(tmp_dir)
    left = os.listdir(tmp_dir)  # the old data file went; its journal stays
    assert len(left) == 1 and left[0].endswith(maildir_io.JOURNAL_SUFFIX)


@pytest_twisted.ensureDeferred
async def test_a_maildir_without_tmp_gets_one(root):
    store = MaildirStore(root)
    await deliver(store)
    os.rmdir(os.path.join(inbox(root, USERS[1]), "tmp"))  # as some other program left it
    await deliver(store)
    for user in USERS:
        assert await messages(store, user) == 2
    await store.close()


@pytest_twisted.ensureDeferred
async def test_regression_recovery_waited_for_the_first_login(tmp_path):
    """A crash's journal is finished when the service starts, with no account opened:
    before, it waited until some user logged in or got mail."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    from mailhost.config import Config
    from mailhost.service import makeService

    c = Config()
    c.server.data_dir = str(tmp_path)
    c.server.domains = ["example.test"]
    c.auth.create_postmaster = False
    c.store.fsync = False
    c.smtp.listen = c.submission.listen = c.pop3.listen = c.imap.listen = []
    c.outbound.queue_dir = str(tmp_path / "queue")
    root = c.data_path(c.store.path)
    name = crashed_commit(root, committed=True)
    svc = makeService(c, reactor=reactor)
    svc.startService()
    try:
        for _ in range(200):  # at most 10 s
            if all(files(root, u, "new") == [name] for u in USERS):
                break
            await deferLater(reactor, 0.05)
        assert all(files(root, u, "new") == [name] for u in USERS)
        assert os.listdir(os.path.join(root, TMP_DIR)) == []
    finally:
        await svc.stopService()
