"""A 100,000-message mailbox: SELECT and ``UID FETCH 1:* (UID FLAGS)`` come from the
index (no message file is opened) in bounded time and memory."""

from __future__ import annotations

import imaplib
import os
import time

import pytest
import pytest_twisted

from tests.imap.test_server_harness import RssSampler, imap_host_fixture  # noqa: F401

N = int(os.environ.get("MAILHOST_IMAP_BIG", "100000"))


def generate_maildir(root: str, n: int) -> None:
    """Small CRLF messages straight into cur/, named like our store names them.

    Hard links to a few source files (a link is ~3x cheaper than create+write, and an
    inode takes at most 65000 links); the test never reads the bodies.
    """
    for d in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    data = b"Subject: big\r\nMessage-ID: <big@example.test>\r\n\r\nbody\r\n"
    sources = []
    for k in range(n // 60000 + 1):
        src = os.path.join(root, "tmp", f"src{k}")
        with open(src, "wb") as f:
            f.write(data)
        sources.append(src)
    start = int(time.time()) - n
    for i in range(n):
        name = "%d.M%dP1Q%d.gen,S=%d,W=%d:2,%s" % (
            start + i, i, i, len(data), len(data), "S" if i % 2 else "")
        os.link(sources[i // 60000], os.path.join(root, "cur", name))


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_select_and_uid_fetch_flags_on_100k_messages(imap_host, tmp_path):
    generate_maildir(str(tmp_path / "mail" / "example.test" / "alice"), N)
    host = await imap_host(kind="maildir")
    folder = await host.folder()  # first open builds the index (the store's one-off scan)
    assert len(folder.messages()) == N

    def no_files(*a, **kw):
        raise AssertionError("FETCH (UID FLAGS) opened a message file")

    folder.open_message = no_files

    def run():
        c = host.client()
        t0 = time.monotonic()
        typ, data = c.select("INBOX")
        t1 = time.monotonic()
        assert data == [str(N).encode()]
        c.send(b"X UID FETCH 1:* (UID FLAGS)\r\n")
        lines = 0
        while True:
            line = c.readline()
            assert line
            if line.startswith(b"X "):
                assert line.startswith(b"X OK")
                break
            lines += 1
        t2 = time.monotonic()
        typ, data = c.search(None, "UNSEEN")
        assert len(data[0].split()) == N // 2
        c.logout()
        return lines, t1 - t0, t2 - t1

    with RssSampler() as rss:
        lines, select_s, fetch_s = await host.in_thread(run)
    assert lines == N
    assert select_s < 5, select_s
    assert fetch_s < 15, fetch_s
    # Server and client together; the client holds nothing but one line at a time.
    assert rss.grown_mib < 100, rss.grown_mib


@pytest_twisted.ensureDeferred
async def test_internaldate_and_order_of_files_adopted_on_first_select(imap_host, tmp_path):
    """Files another program wrote get UIDs in name (delivery) order on the first
    SELECT, and INTERNALDATE is each file's mtime, read on demand before the store's
    background pass has recorded it."""
    root = tmp_path / "mail" / "example.test" / "alice"
    for d in ("cur", "new", "tmp"):
        os.makedirs(root / d)
    data = b"Subject: x\r\n\r\nbody\r\n"
    stamps = {}
    for i in (3, 1, 2, 10):  # written out of order; 10 sorts after 3 numerically
        name = f"17000000{i:02d}.M{i}P1.h,S={len(data)},W={len(data)}:2,S"
        (root / "cur" / name).write_bytes(data)
        mtime = 1_600_000_000 + 86_400 * i
        os.utime(root / "cur" / name, (mtime, mtime))
        stamps[i] = mtime
    host = await imap_host(kind="maildir")

    def run():
        c = host.client()
        c.select("INBOX")
        typ, data = c.uid("FETCH", "1:*", "(UID INTERNALDATE RFC822.SIZE)")
        c.logout()
        return data

    got = await host.in_thread(run)
    assert [time.mktime(imaplib.Internaldate2tuple(line)) for line in got] == \
        [stamps[i] for i in (1, 2, 3, 10)]
    assert [int(line.split(b"UID ")[1].split()[0]) for line in got] == [1, 2, 3, 4]


@pytest_twisted.ensureDeferred
async def test_search_and_fetch_internaldate_read_dates_off_the_reactor(imap_host, tmp_path,
                                                                      monkeypatch):
    """A folder adopted in bulk (dates unknown): SEARCH and FETCH INTERNALDATE get every
    date from one read in a worker thread, with no stat per message on the reactor."""
    import threading

    root = str(tmp_path / "mail" / "example.test" / "alice")
    for d in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, d))
    data = b"Subject: dated\r\n\r\nbody\r\n"
    for i in range(40):  # own files (not hard links): one mtime each
        path = os.path.join(root, "cur", "%d.M1P1.gen,S=%d,W=%d:2," % (
            1_700_000_000 + i, len(data), len(data)))
        with open(path, "wb") as f:
            f.write(data)
        t = 1_600_000_000 + 86400 * i
        os.utime(path, (t, t))
    host = await imap_host(kind="maildir")
    folder = await host.folder()
    folder._dates.stop()
    assert folder._index.unknown_dates == 40
    main, real, calls = threading.current_thread(), os.stat, []

    def stat(*a, **k):
        if threading.current_thread() is main and str(a[0]).startswith(root):
            calls.append(a[0])  # (lazy imports stat modules: not counted)
        return real(*a, **k)

    monkeypatch.setattr(os, "stat", stat)

    def run():
        c = host.client()
        c.select("INBOX")
        typ, found = c.search(None, "SINCE", "1-Oct-2020")
        typ, fetched = c.fetch("1:*", "(INTERNALDATE)")
        c.logout()
        return found, fetched

    found, fetched = await host.in_thread(run)
    monkeypatch.undo()
    assert calls == []
    assert len(found[0].split()) == 40 - 18  # 13 Sep 2020 + 18 days
    assert len(fetched) == 40 and b"13-Sep-2020" in fetched[0]
    assert folder._index.unknown_dates == 0
