"""A command's output goes out in one write with its tagged reply (issue 16).

Under bench/imap_load.py's 10 clients the reactor spent a fifth of its time in
``socket.send``: on loopback a send delivers the bytes and wakes the client, and a
NOOP or FETCH that reported other sessions' EXISTS/EXPUNGE made two or three sends.
Writes are counted at ``DirectWriter.write``, where every reply meets the socket.
"""

from __future__ import annotations

import pytest_twisted

from mailhost import tcp
from tests.imap.test_server_harness import imap_host_fixture, make_message  # noqa: F401


def _recording(monkeypatch) -> list[bytes]:
    writes: list[bytes] = []
    real = tcp.DirectWriter.write

    def write(self, data: bytes) -> None:
        writes.append(bytes(data))
        real(self, data)

    monkeypatch.setattr(tcp.DirectWriter, "write", write)
    return writes


@pytest_twisted.ensureDeferred
async def test_noop_with_updates_of_other_sessions_is_one_write(imap_host, monkeypatch):
    host = await imap_host(kind="maildir")
    await host.deliver(make_message("first"))
    await host.deliver(make_message("second"))
    writes = _recording(monkeypatch)

    def session():
        c = host.client()
        c.select("INBOX")
        return c

    c = await host.in_thread(session)
    await host.deliver(make_message("third"))  # another session's news: EXISTS, RECENT

    def noop():
        writes.clear()
        typ, _ = c.noop()
        assert typ == "OK"
        return list(writes)

    got = await host.in_thread(noop)
    assert len(got) == 1, got
    assert b"* 3 EXISTS\r\n" in got[0] and b" OK " in got[0]

    folder = await host.folder()
    await folder.set_flags([1], ["\\Deleted"], "add")
    await folder.expunge([1])  # another session's EXPUNGE and a new message

    def fetch():
        writes.clear()
        typ, data = c.fetch("1:*", "(UID FLAGS)")
        assert typ == "OK", data
        fetched = list(writes)
        writes.clear()
        typ, _ = c.noop()
        assert typ == "OK"
        noop_writes = list(writes)
        c.logout()
        return fetched, noop_writes

    fetched, noop_writes = await host.in_thread(fetch)
    assert len(fetched) == 1, fetched  # FETCH lines and the OK (no EXPUNGE after FETCH)
    # UID 1 is gone (its data is not there: OK [EXPUNGEISSUED]); its flag change is
    # reported, its EXPUNGE waits for a command that allows it.
    assert fetched[0].count(b" FETCH (UID ") == 2 and b"* 1 FETCH (FLAGS (" in fetched[0]
    assert len(noop_writes) == 1 and b"* 1 EXPUNGE\r\n" in noop_writes[0], noop_writes


@pytest_twisted.ensureDeferred
async def test_continuation_requests_are_not_held(imap_host, monkeypatch):
    """IDLE's '+' goes out while the command runs (the client waits for it), and what
    the command says once it waits for the client is not held either."""
    host = await imap_host(kind="maildir")
    await host.deliver(make_message("first"))
    writes = _recording(monkeypatch)

    def idle():
        c = host.client()
        c.select("INBOX")
        writes.clear()
        c.send(b"I1 IDLE\r\n")
        assert c.readline().startswith(b"+ ")
        return c

    c = await host.in_thread(idle)
    await host.deliver(make_message("second"))

    def done():
        assert c.readline() == b"* 2 EXISTS\r\n"
        c.send(b"DONE\r\n")
        while not (line := c.readline()).startswith(b"I1 "):
            pass
        assert line.startswith(b"I1 OK")
        c.logout()

    await host.in_thread(done)


@pytest_twisted.ensureDeferred
async def test_fetch_header_and_envelope_of_a_small_message_takes_no_thread_hop(imap_host):
    """bench/imap_load.py's FETCH * (BODY.PEEK[HEADER] ENVELOPE) of a just-appended
    message took two thread hops (the MIME scan, then the header fields), 3.5 ms
    median under load; a small message is read at once and parsed where it is."""
    host = await imap_host(kind="maildir")
    await host.deliver(make_message("first"))
    store = host.store
    hops = []
    real = store.run_blocking

    def counted(fn, *args):
        hops.append(getattr(fn, "__qualname__", fn))
        return real(fn, *args)

    def session():
        c = host.client()
        c.select("INBOX")
        return c

    c = await host.in_thread(session)
    store.run_blocking = counted
    try:
        def fetch():
            typ, data = c.fetch("1", "(BODY.PEEK[HEADER] ENVELOPE BODYSTRUCTURE)")
            assert typ == "OK", data
            return data

        data = await host.in_thread(fetch)
    finally:
        del store.run_blocking
    header = data[0][1]
    rest = b"".join(d if isinstance(d, bytes) else d[0] for d in data[1:])
    assert b'ENVELOPE ("Fri, 27 Nov 2026 12:00:00 +0000" "first"' in rest
    assert header.startswith(b"From: Bob <bob@example.test>\r\n") and header.endswith(b"\r\n\r\n")
    assert hops == [], hops
    await host.in_thread(c.logout)
