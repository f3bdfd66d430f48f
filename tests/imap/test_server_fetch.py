"""FETCH and SEARCH through the protocol: bodies, partials, \\Seen, streaming, imapclient."""

from __future__ import annotations

import pytest_twisted
from imapclient import IMAPClient

from mailhost.store.interfaces import DeliveryTarget
from tests.imap.test_server_harness import (  # noqa: F401
    ALICE,
    RssSampler,
    imap_host_fixture,
    make_message,
    raw,
)


@pytest_twisted.ensureDeferred
async def test_fetch_body_partial_peek_and_seen(imap_host):
    host = await imap_host()
    msg = make_message("partial", body="0123456789abcdefghij\r\n")
    await host.deliver(msg)

    def run():
        c = host.client()
        c.select("INBOX")
        typ, data = c.fetch("1", "(BODY.PEEK[])")
        assert data[0][1] == msg
        assert b"\\Seen" not in c.fetch("1", "(FLAGS)")[1][0]
        # A partial returns exactly the octets asked for, labelled with its origin.
        typ, data = c.fetch("1", "(BODY.PEEK[]<0.10>)")
        assert data[0][0].endswith(b"BODY[]<0> {10}") and data[0][1] == msg[:10]
        typ, data = c.fetch("1", "(BODY.PEEK[TEXT]<5.7>)")
        assert data[0][1] == b"56789ab"
        typ, data = c.fetch("1", "(BODY.PEEK[]<%d.100>)" % (len(msg) - 3))
        assert data[0][1] == msg[-3:]
        typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert data[0][1] == b"Subject: partial\r\n\r\n"
        # Non-PEEK sets \Seen, and the client hears about it.
        typ, data = c.fetch("1", "(BODY[TEXT])")
        assert data[0][1] == b"0123456789abcdefghij\r\n"
        flat = b" ".join(x if isinstance(x, bytes) else b" ".join(x) for x in data)
        assert b"\\Seen" in flat
        typ, data = c.uid("FETCH", "1", "(RFC822.SIZE ENVELOPE BODYSTRUCTURE)")
        assert b"UID 1" in data[0] and b"RFC822.SIZE %d" % len(msg) in data[0]
        assert b'"partial"' in data[0] and b'("TEXT" "PLAIN"' in data[0].upper()
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_fetch_with_imapclient_all_macros(imap_host):
    host = await imap_host()
    for i in range(3):
        await host.deliver(make_message(f"mac {i}"))

    def run():
        m = host.client()
        m.select("INBOX")
        for macro in ("ALL", "FAST", "FULL"):
            typ, data = m.fetch("1:*", macro)
            assert typ == "OK" and len(data) == 3 and b"RFC822.SIZE" in data[0]
        m.logout()
        c = IMAPClient("127.0.0.1", port=host.port, ssl=False, timeout=10)
        c.login(*ALICE)
        c.select_folder("INBOX")
        res = c.fetch([2], ["ENVELOPE", "RFC822"])
        assert res[2][b"ENVELOPE"].subject == b"mac 1"
        assert res[2][b"RFC822"] == make_message("mac 1")
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_large_message_streams_in_constant_memory(imap_host):
    host = await imap_host()
    size = 40 * 1024 * 1024
    msg = make_message("big", size=size)
    writer = host.store.new_message()
    for i in range(0, len(msg), 1 << 20):
        writer.write(msg[i:i + (1 << 20)])
    await writer.commit([DeliveryTarget("alice@example.test")])
    expected_len = len(msg)
    del msg

    def run():
        # Read slowly in pieces without buffering the literal in the client.
        from tests.imap.test_server_limits import Conn

        c = Conn(host.port)
        c.cmd(b"L LOGIN alice@example.test secret")
        c.cmd(b"S SELECT INBOX")
        c.send(b"F FETCH 1 BODY.PEEK[]\r\n")
        head = c.line()
        assert head.endswith(b"{%d}\r\n" % expected_len), head
        left = expected_len
        while left:
            chunk = c.file.read(min(left, 1 << 20))
            assert chunk
            left -= len(chunk)
        assert c.line() == b")\r\n"
        assert c.line().startswith(b"F OK")
        c.close()

    with RssSampler() as rss:
        await host.in_thread(run)
    # The whole test process (server + client) grows far less than the 40 MB body.
    assert rss.grown_mib < 25, rss.grown_mib


@pytest_twisted.ensureDeferred
async def test_search_and_uid_search(imap_host):
    host = await imap_host()
    await host.deliver(make_message("alpha report"), flags={"\\Seen"})
    await host.deliver(make_message("beta"))
    await host.deliver(make_message("alpha again", body="needle in body\r\n"))

    def run():
        c = host.client()
        c.select("INBOX")
        assert c.search(None, "ALL") == ("OK", [b"1 2 3"])
        assert c.search(None, "UNSEEN") == ("OK", [b"2 3"])
        assert c.search(None, '(SUBJECT "alpha")') == ("OK", [b"1 3"])
        assert c.search(None, "BODY", "needle") == ("OK", [b"3"])
        assert c.search(None, "SUBJECT", "nomatch") == ("OK", [b""])  # * SEARCH always sent
        assert c.uid("SEARCH", None, "2:*") == ("OK", [b"2 3"])
        assert c.search("UTF-8", "SUBJECT", "beta") == ("OK", [b"2"])
        typ, data = c.search("KOI8-R", "SUBJECT", "beta")
        assert typ == "NO" and b"BADCHARSET" in data[0]
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_big_append_streams_into_the_store(imap_host):
    import hashlib

    host = await imap_host()
    size = 30 * 1024 * 1024
    line = b"y" * 98 + b"\r\n"
    head = b"Subject: big append\r\n\r\n"
    count = (size - len(head)) // len(line)
    total = len(head) + count * len(line)
    digest = hashlib.sha256(head + line * count).hexdigest()

    def run():
        from tests.imap.test_server_limits import Conn

        c = Conn(host.port)
        c.cmd(b"L LOGIN alice@example.test secret")
        c.send(b"A APPEND INBOX (\\Seen) {%d}\r\n" % total)
        assert c.line().startswith(b"+")
        c.send(head)
        chunk = line * 10000
        left = count
        while left:
            n = min(left, 10000)
            c.send(chunk if n == 10000 else line * n)
            left -= n
        c.send(b"\r\n")
        reply = c.until(b"A")[-1]
        assert reply.startswith(b"A OK [APPENDUID"), reply
        # Non-synchronizing literal, below the streaming threshold, still works.
        c.send(b"B APPEND INBOX {12+}\r\nSubject: s\r\n\r\n")
        assert c.until(b"B")[-1].startswith(b"B OK [APPENDUID")
        # A streamed APPEND whose command then fails leaves nothing behind.
        c.send(b"C APPEND Nope {70000+}\r\n" + b"z" * 70000 + b"\r\n")
        assert b"TRYCREATE" in c.until(b"C")[-1]
        c.close()

    with RssSampler() as rss:
        await host.in_thread(run)
    assert rss.grown_mib < 20, rss.grown_mib
    folder = await host.folder()
    infos = folder.messages()
    assert [i.size for i in infos][0] == total and "\\Seen" in infos[0].flags
    f = await folder.open_message(infos[0].uid)
    h = hashlib.sha256()
    try:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    finally:
        f.close()
    assert h.hexdigest() == digest
