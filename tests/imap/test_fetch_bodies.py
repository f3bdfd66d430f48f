"""FETCH of many bodies through real sockets: one write per FETCH line, straight to the
socket while it takes it, back to Twisted's buffer when the client falls behind and
back again once that drains (``mailhost.tcp.DirectWriter.resume``), a reactor turn
given up every ``TURN_OCTETS`` (issue 18, bench/imap_fetch.py)."""

from __future__ import annotations

import socket
import time

import pytest_twisted
from twisted.internet import reactor, threads

from mailhost.imap import server as imap_server
from tests.imap.test_server_harness import imap_host_fixture, make_message  # noqa: F401


def _messages(count: int) -> list[bytes]:
    """Distinct sizes and contents, so a byte out of place shows."""
    out = []
    for n in range(count):
        body = "".join(f"message {n} line {i} " + "abcdefgh"[n % 8] * 40 + "\r\n"
                       for i in range(200 + 37 * (n % 11)))
        out.append(make_message(f"bulk {n}", body=body))
    return out


class _Raw:
    """A blocking IMAP client that reads FETCH literals exactly (no imaplib buffering)."""

    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:  # before connect: a small window makes the server wait
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        assert self.line().startswith(b"* OK")

    def fill(self, at_most: int = 1 << 20) -> None:
        data = self.sock.recv(at_most)
        assert data, "connection closed"
        self.buf += data

    def line(self) -> bytes:
        for _ in range(100000):
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            self.fill()
        raise AssertionError("no line")

    def take(self, n: int) -> bytes:
        for _ in range(100000):
            if len(self.buf) >= n:
                data, self.buf = self.buf[:n], self.buf[n:]
                return data
            self.fill()
        raise AssertionError("short literal")

    def command(self, text: bytes) -> None:
        tag = text.split(b" ", 1)[0]
        self.sock.sendall(text + b"\r\n")
        for _ in range(1000):
            if self.line().startswith(tag + b" OK"):
                return
        raise AssertionError(text)

    def fetch_bodies(self, text: bytes) -> list[bytes]:
        """The literals of every FETCH line up to the tagged OK, in order."""
        tag = text.split(b" ", 1)[0]
        bodies = []
        for _ in range(100000):
            line = self.line()
            if line.startswith(tag + b" "):
                assert line.startswith(tag + b" OK"), line
                return bodies
            assert line.startswith(b"* "), line
            if not line.endswith(b"}"):  # a flag update (\\Seen set by BODY[])
                continue
            bodies.append(self.take(int(line[line.rindex(b"{") + 1:-1])))
            assert self.line() == b")"
        raise AssertionError("no tagged reply")


@pytest_twisted.ensureDeferred
async def test_folder_fetch_stays_in_order_when_the_client_falls_behind(imap_host):
    """The server writes FETCH lines straight to the socket; when the client stops
    reading they queue in Twisted's buffer, and once that has drained the server
    writes directly again. Not a byte may be lost, doubled or reordered across those
    switches."""
    host = await imap_host()
    msgs = _messages(60)
    for m in msgs:
        await host.deliver(m)

    resumed = [0]

    def count_resumes():
        (session,) = host.factory.sessions
        resume = session.gate.on_resume

        def counting():
            resumed[0] += 1
            resume()

        session.gate.on_resume = counting
        # A small send buffer, so the client's stalls reach Twisted's buffer at once
        # (loopback's would otherwise grow to hold the whole response).
        session.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                 32 * 1024)

    def run():
        c = _Raw(host.port, rcvbuf=16 * 1024)
        c.command(b"a LOGIN alice@example.test secret")
        c.command(b"b SELECT INBOX")
        threads.blockingCallFromThread(reactor, count_resumes)
        c.sock.sendall(b"c UID FETCH 1:* BODY.PEEK[]\r\n")
        time.sleep(0.3)  # the server fills the socket and queues the rest
        for _ in range(50):  # then trickles: room opens while Twisted still holds bytes
            time.sleep(0.01)
            c.fill(4 * 1024)
        got = c.fetch_bodies(b"c")
        c.sock.close()
        return got

    got = await threads.deferToThread(run)
    assert resumed[0] > 0  # the server did fall back to Twisted's buffer, and came back
    assert len(got) == len(msgs)
    for n, (want, have) in enumerate(zip(msgs, got, strict=True)):
        assert have == want, n


@pytest_twisted.ensureDeferred
async def test_folder_fetch_gives_up_the_reactor_while_the_client_keeps_up(imap_host):
    """Direct writes never fill Twisted's buffer, so nothing paused a FETCH of a whole
    folder to a client that kept up: it held the reactor (and every other session)
    until its last message. Now ``drain`` yields a turn every ``TURN_OCTETS``."""
    host = await imap_host()
    msgs = _messages(40)  # ~1 MiB: fits in loopback's socket buffers
    for m in msgs:
        await host.deliver(m)
    sent_this_turn = [0]
    most = [0]
    fetching = [True]

    def tick():
        sent_this_turn[0] = 0
        if fetching[0]:
            reactor.callLater(0, tick)

    def count_sends():
        (session,) = host.factory.sessions
        send = session.send

        def counting(data):
            sent_this_turn[0] += len(data)
            most[0] = max(most[0], sent_this_turn[0])
            send(data)

        session.send = counting
        reactor.callLater(0, tick)

    def run():
        c = _Raw(host.port)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        c.command(b"a LOGIN alice@example.test secret")
        c.command(b"b SELECT INBOX")
        threads.blockingCallFromThread(reactor, count_sends)
        c.sock.sendall(b"c UID FETCH 1:* BODY.PEEK[]\r\n")
        got = c.fetch_bodies(b"c")
        c.sock.close()
        return got

    try:
        got = await threads.deferToThread(run)
    finally:
        fetching[0] = False
    assert got == msgs
    total = sum(len(m) for m in msgs)
    biggest = max(len(m) for m in msgs) + 100
    assert total > 3 * imap_server.TURN_OCTETS
    assert most[0] <= imap_server.TURN_OCTETS + biggest, (most[0], total)


@pytest_twisted.ensureDeferred
async def test_body_without_peek_does_not_scan_the_mime_structure(imap_host):
    """``BODY[]`` (not PEEK) shares its item name with the BODY structure item, so every
    message it fetched was scanned for its MIME structure (a thread hop and a parse of
    the whole message) that a whole-message literal does not need."""
    host = await imap_host()
    msgs = _messages(3)
    uids = [await host.deliver(m) for m in msgs]

    def run():
        c = _Raw(host.port)
        c.command(b"a LOGIN alice@example.test secret")
        c.command(b"b SELECT INBOX")
        c.sock.sendall(b"c UID FETCH 1:2 BODY[]\r\n")
        got = c.fetch_bodies(b"c")
        c.command(b"d UID FETCH 3 BODYSTRUCTURE")
        c.sock.close()
        return got

    c_got = await threads.deferToThread(run)
    assert c_got == msgs[:2]
    folder = await host.folder()
    assert folder.get_cached(uids[2], "mime") is not None  # a structure item scans
    assert folder.get_cached(uids[0], "mime") is None
    assert folder.get_cached(uids[1], "mime") is None
