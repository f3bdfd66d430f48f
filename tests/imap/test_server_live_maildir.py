"""IMAP over a Maildir that other programs change at the same time (issue 13).

Another MDA drops files into new/ (tmp/ then rename, as procmail and maildrop do),
mutt and Dovecot rename ``x:2,`` to ``x:2,S`` to set a flag, and anything may unlink.
IDLE clients hear of it within a second, a new session's SELECT sees it without a
NOOP, and FETCH never answers OK with data missing. Every scenario runs with the
store's inotify watch and with ``watch = "poll"`` (the fallback). Real loopback
sockets against the in-process listener; clients are imaplib and curl.
"""

from __future__ import annotations

import imaplib
import os
import re
import subprocess
import time

import pytest
import pytest_twisted

from mailhost.store.maildir import MaildirStore
from tests.imap.test_server_harness import ALICE, imap_host_fixture, make_message, raw  # noqa: F401

MODES = ["inotify", "poll"]
#: The promise: an IDLE client hears of another program's change within this long.
PUSH_WITHIN = 1.0


def inbox_dir(host) -> str:
    return os.path.join(host.store.root, "example.test", "alice")


def foreign_drop(home: str, data: bytes, n: int = 1) -> str:
    """Deliver as an MDA does: write tmp/, then rename into new/. Returns the name."""
    name = f"{int(time.time())}.M{n}P4242.otherhost"
    tmp = os.path.join(home, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, os.path.join(home, "new", name))
    return name


def only_file(home: str, sub: str) -> str:
    (name,) = os.listdir(os.path.join(home, sub))
    return name


class Idler:
    """An imaplib session in IDLE, read line by line with a deadline (imaplib in
    Python 3.11 has no IDLE)."""

    def __init__(self, c: imaplib.IMAP4) -> None:
        self.c = c
        c.send(b"i1 IDLE\r\n")
        line = c.readline()
        assert line.startswith(b"+"), line

    def wait_for(self, pattern: bytes, timeout: float) -> tuple[bytes | None, float]:
        """(first untagged line matching ``pattern``, seconds waited) or (None, ...)."""
        start = time.monotonic()
        deadline = start + timeout
        rx = re.compile(pattern)
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.c.sock.settimeout(left)
                try:
                    line = self.c.readline()
                except (TimeoutError, OSError):
                    break
                if not line:
                    break
                if rx.search(line):
                    return line.rstrip(b"\r\n"), time.monotonic() - start
        finally:
            self.c.sock.settimeout(10)
        return None, time.monotonic() - start

    def done(self) -> list[bytes]:
        return raw(self.c, b"DONE", tag=b"i1")


async def start_host(imap_host, tmp_path, mode: str):
    store = MaildirStore(str(tmp_path / "mail"), fsync=False, watch=mode)
    host = await imap_host(store=store)
    return host


def selected_client(host, readonly: bool = False) -> imaplib.IMAP4:
    c = host.client()
    c.select("INBOX", readonly=readonly)
    return c


async def settle(host, seconds: float = 0.3) -> None:
    """Let the watch's first (catch-up) rescan and any poll round finish."""
    await host.in_thread(time.sleep, seconds)


# -- another program's new/ drop ---------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_idle_hears_another_programs_new_drop_within_a_second(imap_host, tmp_path,
                                                                     mode):
    host = await start_host(imap_host, tmp_path, mode)
    await host.deliver(make_message("first"))
    body = make_message("dropped by procmail", body="From another MDA.\r\n")
    home = inbox_dir(host)

    def run():
        c = selected_client(host)
        idler = Idler(c)
        time.sleep(0.3)
        foreign_drop(home, body)
        line, waited = idler.wait_for(rb"^\* 2 EXISTS", 5)
        idler.done()
        typ, data = c.fetch("2", "(BODY.PEEK[])")
        c.logout()
        return line, waited, typ, data

    line, waited, typ, data = await host.in_thread(run)
    assert line == b"* 2 EXISTS"
    assert waited < PUSH_WITHIN
    assert typ == "OK"
    assert data[0][1] == body


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_second_session_select_sees_dropped_file_without_noop(imap_host, tmp_path,
                                                                    mode):
    host = await start_host(imap_host, tmp_path, mode)
    await host.deliver(make_message("first"))
    home = inbox_dir(host)

    def run():
        watcher = selected_client(host)  # the folder is open and listened to
        c = host.client()
        c.select("INBOX")
        foreign_drop(home, make_message("one"), 1)
        # No NOOP anywhere: a new session's SELECT and STATUS count it.
        fresh = host.client()
        typ, count = fresh.select("INBOX", readonly=True)
        typ2, status = fresh.status("INBOX", "(MESSAGES)")
        foreign_drop(home, make_message("two"), 2)
        third = host.client()
        typ3, count3 = third.examine("INBOX") if hasattr(third, "examine") else \
            third.select("INBOX", readonly=True)
        for x in (watcher, c, fresh, third):
            x.logout()
        return count, status, count3

    count, status, count3 = await host.in_thread(run)
    assert count == [b"2"]
    assert b"(MESSAGES 2)" in status[0]
    assert count3 == [b"3"]


@pytest_twisted.ensureDeferred
async def test_select_of_a_folder_nobody_has_open_sees_dropped_file(imap_host, tmp_path):
    host = await start_host(imap_host, tmp_path, "inotify")
    await host.deliver(make_message("first"))
    folder = await host.folder()  # loaded, but nobody listens: no watch
    home = inbox_dir(host)
    foreign_drop(home, make_message("one"))

    def run():
        c = host.client()
        typ, count = c.select("INBOX")
        c.logout()
        return count

    assert await host.in_thread(run) == [b"2"]
    assert len(folder.messages()) == 2


# -- another program's flag rename ----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_idle_hears_another_programs_flag_rename_within_a_second(imap_host, tmp_path,
                                                                       mode):
    host = await start_host(imap_host, tmp_path, mode)
    body = make_message("flag me")
    await host.deliver(body)
    home = inbox_dir(host)

    def run():
        c = selected_client(host)  # SELECT moves it to cur/x:2,
        name = only_file(home, "cur")
        assert name.endswith(":2,")
        idler = Idler(c)
        time.sleep(0.3)
        os.rename(os.path.join(home, "cur", name), os.path.join(home, "cur", name + "S"))
        line, waited = idler.wait_for(rb"^\* 1 FETCH \(FLAGS", 5)
        idler.done()
        typ, data = c.fetch("1", "(FLAGS BODY.PEEK[])")
        c.logout()
        return line, waited, typ, data

    line, waited, typ, data = await host.in_thread(run)
    assert line in (b"* 1 FETCH (FLAGS (\\Seen))", b"* 1 FETCH (FLAGS (\\Recent \\Seen))")
    assert waited < PUSH_WITHIN
    assert typ == "OK"
    assert b"\\Seen" in data[0][0]
    assert data[0][1] == body


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_fetch_after_foreign_flag_rename_never_answers_ok_without_data(
        imap_host, tmp_path, mode):
    """The issue's report: after mutt renamed cur/x:2, to x:2,S, FETCH and UID FETCH
    answered OK with no data and curl said "Remote file not found", until a NOOP."""
    host = await start_host(imap_host, tmp_path, mode)
    body = make_message("renamed under us")
    await host.deliver(body)
    home = inbox_dir(host)

    def run():
        c = selected_client(host)
        name = only_file(home, "cur")
        out = []
        for n, (flags, cmd) in enumerate([("S", "fetch"), ("FS", "uid")]):
            current = only_file(home, "cur")
            os.rename(os.path.join(home, "cur", current),
                      os.path.join(home, "cur", name + flags))
            # At once: no IDLE, no NOOP in between.
            if cmd == "fetch":
                out.append(raw(c, b"f%d FETCH 1 (FLAGS BODY.PEEK[])" % n))
            else:
                out.append(raw(c, b"f%d UID FETCH 1 (FLAGS BODY.PEEK[])" % n))
        c.logout()
        os.rename(os.path.join(home, "cur", name + "FS"),
                  os.path.join(home, "cur", name + "FRS"))
        curl = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--user", "%s:%s" % ALICE,
             f"imap://127.0.0.1:{host.port}/INBOX;UID=1"],
            capture_output=True, timeout=30)
        return out, curl

    out, curl = await host.in_thread(run)
    for lines in out:
        assert lines[-1].split(b" ", 1)[1].startswith(b"OK"), lines
        joined = b"\n".join(lines)
        assert b"Subject: renamed under us" in joined, lines
        assert b"\\Seen" in joined, lines
    assert curl.returncode == 0, curl.stderr
    assert curl.stdout.replace(b"\r\n", b"\n") == body.replace(b"\r\n", b"\n")


# -- another program's unlink ---------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_idle_hears_another_programs_unlink_within_a_second(imap_host, tmp_path, mode):
    host = await start_host(imap_host, tmp_path, mode)
    await host.deliver(make_message("one"))
    await host.deliver(make_message("two"))
    home = inbox_dir(host)

    def run():
        c = selected_client(host)
        (victim,) = [n for n in os.listdir(os.path.join(home, "cur"))
                     if b"two" in open(os.path.join(home, "cur", n), "rb").read()]
        idler = Idler(c)
        time.sleep(0.3)
        os.unlink(os.path.join(home, "cur", victim))
        line, waited = idler.wait_for(rb"^\* 2 EXPUNGE", 5)
        idler.done()
        typ, count = c.select("INBOX")
        c.logout()
        return line, waited, count

    line, waited, count = await host.in_thread(run)
    assert line == b"* 2 EXPUNGE"
    assert waited < PUSH_WITHIN
    assert count == [b"1"]


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_fetch_of_vanished_file_is_ok_expungeissued_then_expunge_at_noop(
        imap_host, tmp_path, mode):
    host = await start_host(imap_host, tmp_path, mode)
    for n in range(3):
        await host.deliver(make_message(f"m{n}"))
    home = inbox_dir(host)

    def run():
        c = selected_client(host)
        (victim,) = [n for n in os.listdir(os.path.join(home, "cur"))
                     if b"Subject: m1" in open(os.path.join(home, "cur", n), "rb").read()]
        os.unlink(os.path.join(home, "cur", victim))
        fetched = raw(c, b"f1 FETCH 1:3 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        noop = raw(c, b"n1 NOOP")
        c.logout()
        return fetched, noop

    fetched, noop = await host.in_thread(run)
    joined = b"\n".join(fetched)
    assert fetched[-1].startswith(b"f1 OK [EXPUNGEISSUED]"), fetched  # as Dovecot 2.3
    assert b"Subject: m0" in joined and b"Subject: m2" in joined
    assert b"Subject: m1" not in joined
    assert not any(line.endswith(b"EXPUNGE") for line in fetched)  # RFC 3501 7.4.1
    assert b"* 2 EXPUNGE" in noop
    assert noop[-1].startswith(b"n1 OK")


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_fetch_star_after_another_sessions_expunge_answers_ok_expungeissued(
        imap_host, tmp_path, mode):
    """Under bench/imap_load.py's 10 clients, ``FETCH *`` whose last message another
    session had just expunged got ``NO [EXPUNGEISSUED]`` (200 failures a run) where
    Dovecot 2.3 answers ``OK [EXPUNGEISSUED]`` (RFC 2180 4.1.3, RFC 5530)."""
    host = await start_host(imap_host, tmp_path, mode)
    for n in range(3):
        await host.deliver(make_message(f"m{n}"))

    def run():
        a = selected_client(host)
        b = selected_client(host)
        gone = raw(b, b"s1 STORE 3 +FLAGS.SILENT (\\Deleted)") + raw(b, b"e1 EXPUNGE")
        index = raw(a, b"f1 FETCH * (UID FLAGS RFC822.SIZE)")
        body = raw(a, b"f2 FETCH * (BODY.PEEK[HEADER] ENVELOPE)")
        both = raw(a, b"f3 FETCH 2:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        noop = raw(a, b"n1 NOOP")
        a.logout()
        b.logout()
        return gone, index, body, both, noop

    gone, index, body, both, noop = await host.in_thread(run)
    assert b"* 3 EXPUNGE" in gone, gone
    for lines in (index, body, both):
        assert lines[-1].split(b" ", 1)[1].startswith(b"OK [EXPUNGEISSUED]"), lines
        assert not any(line.endswith(b"EXPUNGE") for line in lines)  # RFC 3501 7.4.1
    # Only the flag update RFC 3501 7.4.1 allows; no data of the expunged message.
    assert [x for x in index + body + both if x.startswith(b"* 3 FETCH")] in (
        [], [b"* 3 FETCH (FLAGS (\\Deleted \\Recent))"]), index
    assert b"Subject: m1" in b"\n".join(both)
    assert b"* 3 EXPUNGE" in noop
    assert noop[-1].startswith(b"n1 OK")


# -- our own changes cost no rescans -------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_own_append_and_store_do_not_cause_repeated_rescans(imap_host, tmp_path, mode):
    host = await start_host(imap_host, tmp_path, mode)
    await host.deliver(make_message("first"))
    folder = await host.folder()
    rounds = 10

    def run():
        a = selected_client(host)
        idler = Idler(a)
        time.sleep(2.5)  # the catch-up rescan and the settling of directory times
        before = folder.listings
        start = time.monotonic()
        b = selected_client(host)
        for n in range(rounds):
            b.append("INBOX", None, None, make_message(f"own {n}"))
            b.store("1", "+FLAGS" if n % 2 == 0 else "-FLAGS", "(\\Flagged)")
        elapsed = time.monotonic() - start
        line, _ = idler.wait_for(rb"^\* %d EXISTS" % (rounds + 1), 5)
        time.sleep(0.5)
        during = folder.listings - before
        idler.done()
        a.logout()
        b.logout()
        return line, during, elapsed

    line, during, elapsed = await host.in_thread(run)
    assert line is not None
    if mode == "inotify":
        assert during == 0
    else:
        # Polling lists a folder whose directory times are recent, at most once per
        # round; never once per change.
        assert during <= (elapsed + 0.5 + 2.0) / 0.5 + 1
        assert during < 2 * rounds


# -- watch limits --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_watch_limit_falls_back_to_polling(imap_host, tmp_path, monkeypatch):
    """inotify_add_watch failing (ENOSPC: max_user_watches reached) means polling."""
    from twisted.internet import inotify

    from mailhost.store._maildir import maildir_watch

    def full(self, *args, **kwargs):
        raise inotify.INotifyError("No space left on device")

    monkeypatch.setattr(maildir_watch._Notifier, "watch", full)
    host = await start_host(imap_host, tmp_path, "inotify")
    await host.deliver(make_message("first"))
    folder = await host.folder()
    home = inbox_dir(host)

    def run():
        c = selected_client(host)
        idler = Idler(c)
        time.sleep(0.3)
        foreign_drop(home, make_message("dropped"))
        line, waited = idler.wait_for(rb"^\* 2 EXISTS", 5)
        idler.done()
        c.logout()
        return line, waited

    line, waited = await host.in_thread(run)
    assert folder._watching is None  # given back once the session left
    assert line == b"* 2 EXISTS"
    assert waited < PUSH_WITHIN


@pytest_twisted.ensureDeferred
async def test_watches_end_with_the_last_listener(imap_host, tmp_path):
    host = await start_host(imap_host, tmp_path, "inotify")
    await host.deliver(make_message("first"))
    watcher = host.store._watcher

    def run(n):
        clients = [selected_client(host) for _ in range(n)]
        time.sleep(0.2)
        watching = watcher.watching
        for c in clients:
            c.logout()
        return watching

    assert await host.in_thread(run, 2) == 1
    await settle(host, 0.2)
    assert watcher.watching == 0
    assert watcher._notifier is None  # the inotify descriptor is given back
