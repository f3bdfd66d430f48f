"""IHeaderBlocks on Maildir (maildir_headers): the header blocks of many messages read in
one thread job, as the first SORT/THREAD/header SEARCH of a folder does (issue 16)."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from mailhost.imap.headerindex import _head
from mailhost.store._maildir import maildir_headers, uidcache
from mailhost.store.interfaces import IHeaderBlocks
from mailhost.store.maildir import MaildirStore
from tests.store.test_maildir import (
    deliver,
    folder_of,
    foreign_file,
    maildir_dirs,
    read_all,
    user_dir,
)


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "mail")


LONG = b"X-Long: " + b"y" * (maildir_headers.HEAD_CHUNK + 100) + b"\r\n"


def _whole(f) -> bytes:
    return f.read()


@pytest_twisted.ensureDeferred
async def test_read_headers_gives_what_open_message_gives(root):
    """Each message as ``open_message`` reads it (LF-only files CRLF-wrapped), in the
    order asked, a header longer than the first read through the open file."""
    store = MaildirStore(root)
    await deliver(store, b"Subject: one\r\n\r\nbody\r\n")
    await deliver(store, b"Subject: long\r\n" + LONG + b"\r\nbody\r\n")
    await deliver(store, b"Subject: no body, no blank line\r\n")
    box = await folder_of(store)
    home = user_dir(root)
    foreign_file(home, "cur/1600000000.lf.host:2,S", b"Subject: lf\n folded\n\nbody\n",
                 1_600_000_000)
    await box.refresh()
    assert verifyObject(IHeaderBlocks, box)
    uids = [4, 2, 1, 3]
    got = await box.read_headers(uids, _head)
    assert [u for u, _ in got] == uids
    for uid, head in got:
        assert head == _head_of(await read_all(box, uid)), uid
    assert dict(got)[4] == b"Subject: lf\r\n folded\r\n"  # (_head drops the blank line)
    assert dict(got)[2].endswith(LONG)
    # A file a reader receives yields the message from its start.
    whole = dict(await box.read_headers([2, 4], _whole))
    assert whole[2] == await read_all(box, 2)
    assert whole[4].startswith(b"Subject: lf\r\n folded\r\n\r\n")


def _head_of(message: bytes) -> bytes:
    import io

    return _head(io.BytesIO(message))


@pytest_twisted.ensureDeferred
async def test_read_headers_finds_renamed_files_and_skips_gone_ones(root):
    """A file another program renamed (a flag) since the index saw it is read under its
    new name; one deleted is left out; a UID the folder never had too."""
    store = MaildirStore(root)
    for n in range(3):
        await deliver(store, b"Subject: m%d\r\n\r\nbody\r\n" % n)
    box = await folder_of(store)
    await box.claim_recent()
    cur = os.path.join(user_dir(root), "cur")
    by_key = {name.split(":")[0]: name for name in os.listdir(cur)}
    first, second = by_key[box.get(1).key], by_key[box.get(2).key]
    os.rename(os.path.join(cur, first), os.path.join(cur, first.split(":")[0] + ":2,FS"))
    os.unlink(os.path.join(cur, second))
    got = await box.read_headers([1, 2, 3, 99], _head)
    assert got == [(1, b"Subject: m0\r\n"), (3, b"Subject: m2\r\n")]


@pytest_twisted.ensureDeferred
async def test_read_headers_records_unknown_dates(root):
    """Files adopted in bulk have no date yet: reading their headers learns it from the
    open file and records it in mailhost-uidcache, so the background date pass has no
    file left to stat."""
    home = user_dir(root)
    maildir_dirs(home)
    for n in range(5):
        foreign_file(home, f"cur/{1_600_000_000 + n}.f{n}.host:2,",
                     b"Subject: s%d\r\n\r\nb\r\n" % n, 1_600_000_000 + 60 * n)
    store = MaildirStore(root)
    box = await folder_of(store)
    cache = os.path.join(home, uidcache.CACHE_FILE)

    def known_dates():
        dates = uidcache.read(cache, box.uid_validity).dates_by_uid()
        return {uid: date for uid, date in dates.items() if date >= 0}

    assert known_dates() == {}
    got = await box.read_headers([1, 2, 3, 4, 5], _head)
    assert [h for _, h in got] == [b"Subject: s%d\r\n" % n for n in range(5)]
    assert known_dates() == {
        n + 1: float(1_600_000_000 + 60 * n) for n in range(5)}
    stats = []
    real_stat = os.stat
    os.stat = lambda *a, **kw: stats.append(a) or real_stat(*a, **kw)
    try:
        assert [box.get(u).internal_date for u in range(1, 6)] == [
            1_600_000_000 + 60 * n for n in range(5)]
    finally:
        os.stat = real_stat
    assert stats == []
