"""Several sessions on one mailbox, and IDLE, with imapclient over real sockets.

Changes made elsewhere are queued per session and announced only where RFC 3501
allows: EXPUNGE never after FETCH/STORE/SEARCH, numbers never shift under a command.
"""

from __future__ import annotations

import os
import time

import pytest
import pytest_twisted
from imapclient import IMAPClient
from twisted.internet import reactor, task

from tests.imap.test_server_harness import ALICE, imap_host_fixture, make_message  # noqa: F401


def _client(host) -> IMAPClient:
    c = IMAPClient("127.0.0.1", port=host.port, ssl=False, timeout=10)
    c.login(*ALICE)
    return c


@pytest_twisted.ensureDeferred
async def test_idle_gets_exists_within_a_second_of_delivery(imap_host):
    host = await imap_host()
    await host.deliver(make_message("first"))

    def waiter():
        c = _client(host)
        c.select_folder("INBOX")
        c.idle()
        t0 = time.monotonic()
        responses = c.idle_check(timeout=5)
        elapsed = time.monotonic() - t0
        text = c.idle_done()
        c.logout()
        return responses, elapsed, text

    d = host.in_thread(waiter)
    await task.deferLater(reactor, 0.5, lambda: None)
    t_deliver = time.monotonic()
    await host.deliver(make_message("second"))
    responses, elapsed, text = await d
    assert (2, b"EXISTS") in responses
    assert time.monotonic() - t_deliver < 5
    assert elapsed < 1.5  # woke up right after the delivery at ~0.5 s
    assert b"IDLE terminated" in text[0]


@pytest_twisted.ensureDeferred
async def test_idle_pushes_flags_and_expunge_and_only_done_ends_it(imap_host):
    host = await imap_host()
    for i in range(3):
        await host.deliver(make_message(f"m{i}"))

    def run():
        a = _client(host)
        b = _client(host)
        a.select_folder("INBOX")
        b.select_folder("INBOX")
        a.idle()
        b.add_flags([2], [b"\\Flagged"])
        got = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(r[1] == b"FETCH" for r in got):
            got += a.idle_check(timeout=1)
        b.delete_messages([1])
        b.expunge()
        while time.monotonic() < deadline and not any(r[1] == b"EXPUNGE" for r in got):
            got += a.idle_check(timeout=1)
        a.idle_done()
        assert any(r[1] == b"FETCH" and r[0] == 2 and b"\\Flagged" in r[2][1] for r in got
                   if len(r) > 2), got
        assert (1, b"EXPUNGE") in got
        # Anything but DONE: BAD, and IDLE ends.
        a._imap.send(b"I2 IDLE\r\n")
        assert a._imap.readline().startswith(b"+")
        a._imap.send(b"NOPE\r\n")
        assert a._imap.readline().startswith(b"I2 BAD")
        assert a.noop()[0].endswith(b"completed")
        a.logout()
        b.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_two_sessions_see_flags_and_expunges_at_allowed_points(imap_host):
    host = await imap_host()
    for i in range(4):
        await host.deliver(make_message(f"m{i}"))

    def run():
        a = _client(host)
        b = _client(host)
        a.select_folder("INBOX")
        b.select_folder("INBOX")
        b.set_flags([3], [b"\\Answered"])
        b.delete_messages([1])
        b.expunge()
        # FETCH in A: flags update may come, but no EXPUNGE and old numbering holds.
        a._imap.send(b"F1 FETCH 4 (UID)\r\n")
        lines = []
        while True:
            line = a._imap.readline()
            lines.append(line)
            if line.startswith(b"F1 "):
                break
        assert not any(b"EXPUNGE" in x for x in lines), lines
        assert any(x.startswith(b"* 4 FETCH (UID 4)") for x in lines), lines
        # NOOP: now the EXPUNGE arrives and numbering shifts.
        a._imap.send(b"N1 NOOP\r\n")
        lines = []
        while True:
            line = a._imap.readline()
            lines.append(line)
            if line.startswith(b"N1 "):
                break
        assert b"* 1 EXPUNGE\r\n" in lines, lines
        # imapclient fetches by UID: UID 4 is now sequence number 3.
        assert a.fetch([4], ["FLAGS"])[4][b"SEQ"] == 3
        flags = a.get_flags([3])
        assert b"\\Answered" in flags[3]
        # New mail seen by A after a command completes.
        b.append("INBOX", make_message("new"))
        resp = a.noop()
        assert (4, b"EXISTS") in resp[1]
        a.logout()
        b.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_listener_removed_on_logout_and_disconnect(imap_host):
    host = await imap_host()
    folder = await host.folder()

    def run():
        a = _client(host)
        a.select_folder("INBOX")
        a.logout()
        b = _client(host)
        b.select_folder("INBOX")
        b.shutdown()  # drop without LOGOUT

    await host.in_thread(run)
    await task.deferLater(reactor, 0.2, lambda: None)
    listeners = folder._listeners  # white-box: both stores keep a ListenerSet here
    listeners = getattr(listeners, "_listeners", listeners)
    assert not host.factory.sessions
    assert len(list(listeners)) == 0
    # Delivering now must not write to closed sessions.
    await host.deliver(make_message("after"))


@pytest_twisted.ensureDeferred
async def test_recent_belongs_to_the_session_that_first_reports_it(imap_host):
    host = await imap_host()

    def run():
        a = _client(host)
        a.select_folder("INBOX")
        b = _client(host)
        b.append("INBOX", make_message("new one"))
        resp = a.noop()[1]
        assert (1, b"EXISTS") in resp and (1, b"RECENT") in resp
        assert b"\\Recent" in a.get_flags([1])[1]
        c = _client(host)
        assert c.select_folder("INBOX", readonly=True)[b"RECENT"] == 0
        for x in (a, b, c):
            x.logout()

    await host.in_thread(run)


@pytest.mark.parametrize("kind", ["maildir", "memory"])
@pytest_twisted.ensureDeferred
async def test_append_to_the_selected_mailbox_is_recent_to_the_appender_alone(
        imap_host, kind):
    """Issue 16: an APPEND into the folder its session has selected read-write is that
    session's \\Recent at once (EXISTS and RECENT with the tagged OK, \\Recent in
    FETCH, SEARCH RECENT) and no other session's, selected before or after; the Maildir
    file goes straight to cur/, where the claim would have renamed it. An APPEND from a
    session that has another folder selected, or the same one read-only, stays recent
    for the first session to report it."""
    host = await imap_host(kind=kind)

    def run():
        a = _client(host)
        a.select_folder("INBOX")
        b = _client(host)
        b.select_folder("INBOX")
        a.append("INBOX", make_message("mine"))
        assert a.folder_status("INBOX", ["RECENT"])[b"RECENT"] == 0  # STATUS: others'
        assert b"\\Recent" in a.get_flags([1])[1]
        assert a.search(["RECENT"]) == [1]
        got = b.noop()[1]
        assert (1, b"EXISTS") in got and (0, b"RECENT") in got
        assert b"\\Recent" not in b.get_flags([1])[1]
        c = _client(host)
        assert c.select_folder("INBOX")[b"RECENT"] == 0
        c.select_folder("INBOX", readonly=True)  # EXAMINE
        c.append("INBOX", make_message("examined"))  # read-only: not its own
        assert (2, b"RECENT") not in c.noop()[1]
        got = a.noop()[1]
        assert (2, b"EXISTS") in got and (2, b"RECENT") in got  # the first to report it
        assert b"\\Recent" in a.get_flags([2])[2]
        for x in (a, b, c):
            x.logout()

    await host.in_thread(run)
    if kind == "maildir":  # the second one's claim may still be on its way to cur/
        home = os.path.join(host.store.root, "example.test", "alice")
        deadline = time.monotonic() + 5
        while os.listdir(os.path.join(home, "new")) and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.05, lambda: None)
        assert len(os.listdir(os.path.join(home, "cur"))) == 2
        assert os.listdir(os.path.join(home, "new")) == []


@pytest_twisted.ensureDeferred
async def test_fetch_with_a_body_shows_the_sessions_recent_not_the_stores(imap_host):
    """A FETCH that reads the message showed the store's \\Recent: the session that
    reported the message lost it once its claim landed (now at once: issue 16), and
    RFC 3501 2.3.2 gives it to that session alone."""
    host = await imap_host()

    def run():
        a = _client(host)
        a.select_folder("INBOX")
        b = _client(host)
        b.append("INBOX", make_message("new one"))
        assert (1, b"RECENT") in a.noop()[1]
        items = ["FLAGS", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]
        assert b"\\Recent" in a.fetch([1], items)[1][b"FLAGS"]
        assert b"\\Recent" in a.fetch([1], ["FLAGS"])[1][b"FLAGS"]
        b.select_folder("INBOX")
        assert b"\\Recent" not in b.fetch([1], items)[1][b"FLAGS"]
        for x in (a, b):
            x.logout()

    await host.in_thread(run)
