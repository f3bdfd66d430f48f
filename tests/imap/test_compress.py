"""COMPRESS=DEFLATE (RFC 4978) over real sockets: a raw zlib client, mbsync and mutt,
corrupt input, a decompression bomb, and any split of the compressed stream."""

from __future__ import annotations

import os
import socket
import subprocess
import zlib

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import threads
from twisted.logger import globalLogPublisher

from mailhost.imap.compress import DeflateError, Deflater, Inflater
from tests.imap.test_server_harness import (  # noqa: F401
    RssSampler,
    imap_host_fixture,
    make_message,
)


class ZConn:
    """A blocking client that turns on COMPRESS=DEFLATE after login."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""
        self.z_in: zlib._Decompress | None = None
        self.z_out: zlib._Compress | None = None
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        if self.z_out is not None:
            data = self.z_out.compress(data) + self.z_out.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += self.z_in.decompress(data) if self.z_in is not None else data
        return True

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                out, self.buf = self.buf, b""
                return out
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def until(self, tag: bytes) -> bytes:
        """Everything up to and including the tagged reply (literals included raw)."""
        out = b""
        while True:
            line = self.line()
            if not line:
                return out
            out += line
            if line.endswith(b"}\r\n"):  # a literal follows
                n = int(line[line.rindex(b"{") + 1:-3])
                while len(self.buf) < n:
                    if not self._fill():
                        break
                out, self.buf = out + self.buf[:n], self.buf[n:]
                continue
            if line.startswith(tag + b" "):
                return out

    def cmd(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.until(line.split(b" ", 1)[0])

    def compress(self, tag: bytes = b"Z") -> bytes:
        reply = self.cmd(tag + b" COMPRESS DEFLATE")
        if reply.startswith(tag + b" OK"):
            self.z_in = zlib.decompressobj(-15)
            self.z_out = zlib.compressobj(6, zlib.DEFLATED, -15)
            self.buf = self.z_in.decompress(self.buf)
        return reply

    def closed(self) -> bool:
        try:
            return not self._fill()
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest_twisted.ensureDeferred
async def test_a_compressed_session_answers_byte_for_byte_as_a_plain_one(imap_host):
    host = await imap_host(kind="maildir")
    for i in range(5):
        await host.deliver(make_message(f"message {i}", size=20_000 * (i + 1)))

    def run() -> None:
        plain, z = ZConn(host.port), ZConn(host.port)
        for c in (plain, z):
            assert c.cmd(b"L LOGIN alice@example.test secret").splitlines()[-1].startswith(b"L OK")
        caps = plain.cmd(b"C CAPABILITY")
        assert b" COMPRESS=DEFLATE" in caps
        assert z.compress() == b"Z OK DEFLATE active\r\n"
        assert b"COMPRESS=DEFLATE" not in z.cmd(b"C CAPABILITY")
        for line in (b"S EXAMINE INBOX", b"F FETCH 1:* (UID RFC822.SIZE BODY.PEEK[])",
                     b"H UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
                     b"X SEARCH SUBJECT \"message 3\""):
            assert z.cmd(line) == plain.cmd(line), line
        # A literal sent compressed, and the message it makes read back.
        body = make_message("appended while compressed", size=100_000)
        z.send(b"A APPEND INBOX {%d}\r\n" % len(body))
        assert z.line().startswith(b"+")
        z.send(body + b"\r\n")
        assert b"A OK [APPENDUID" in z.until(b"A")
        assert z.cmd(b"N NOOP").endswith(b"N OK NOOP completed\r\n")
        got = z.cmd(b"G FETCH 6 BODY.PEEK[]")
        assert body in got
        assert z.cmd(b"Q LOGOUT").startswith(b"* BYE")
        plain.close()
        z.close()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_commands_pipelined_behind_compress_are_read_compressed(imap_host):
    host = await imap_host()

    def run() -> None:
        c = ZConn(host.port)
        c.cmd(b"L LOGIN alice@example.test secret")
        deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        behind = deflate.compress(b"A NOOP\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH)
        c.sock.sendall(b"Z COMPRESS DEFLATE\r\n" + behind)
        assert c.line() == b"Z OK DEFLATE active\r\n"
        c.z_in, c.z_out = zlib.decompressobj(-15), deflate
        c.buf = c.z_in.decompress(c.buf)
        assert c.until(b"A") == b"A OK NOOP completed\r\n"
        c.close()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_compress_refusals(imap_host):
    host = await imap_host()

    def run() -> None:
        c = ZConn(host.port)
        assert b"COMPRESS" not in c.greeting  # only once logged in
        assert c.cmd(b"P COMPRESS DEFLATE").startswith(b"P BAD")
        c.cmd(b"L LOGIN alice@example.test secret")
        assert c.cmd(b"U COMPRESS LZMA").startswith(b"U BAD Unknown compression mechanism")
        assert c.cmd(b"E COMPRESS").startswith(b"E BAD")
        assert c.compress().startswith(b"Z OK")
        assert c.cmd(b"T COMPRESS DEFLATE") == \
            b"T NO [COMPRESSIONACTIVE] DEFLATE is already active\r\n"
        assert c.cmd(b"N NOOP").startswith(b"N OK")
        c.close()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_corrupt_compressed_input_gets_bye_and_a_close(imap_host):
    host = await imap_host()

    def run() -> None:
        c = ZConn(host.port)
        c.cmd(b"L LOGIN alice@example.test secret")
        c.compress()
        c.sock.sendall(b"\xff\xfe this is not deflate \x00\x01" * 4)
        assert c.line() == b"* BYE Corrupt compressed data\r\n"
        assert c.closed()
        c.close()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_a_decompression_bomb_is_read_in_bounded_memory(imap_host):
    """300 MB of one line, sent as ~300 KB of deflate: the server inflates it a piece at
    a time as its framer drops the over-long line, answers BAD, and serves on."""
    host = await imap_host(max_line_length=8192)

    def run() -> None:
        c = ZConn(host.port)
        c.cmd(b"L LOGIN alice@example.test secret")
        c.compress()
        deflate = c.z_out
        piece = b"x" * (1 << 20)
        with RssSampler() as rss:
            c.sock.sendall(deflate.compress(b"B NOOP "))
            for _ in range(300):
                c.sock.sendall(deflate.compress(piece))
            c.sock.sendall(deflate.compress(b"\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH))
            assert c.line().startswith(b"B BAD Line too long")
            assert c.cmd(b"N NOOP").startswith(b"N OK")
        assert rss.grown_mib < 64, rss.grown_mib
        c.close()

    await host.in_thread(run)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=20_000), cuts=st.lists(st.integers(0, 30_000), max_size=8),
       limit=st.integers(1, 4096))
def test_any_split_of_the_stream_inflates_to_the_same_bytes(data, cuts, limit):
    sent = Deflater().deflate(data)
    inflater, out = Inflater(), b""
    edges = sorted({0, len(sent), *(c % (len(sent) + 1) for c in cuts)})
    for a, b in zip(edges, edges[1:], strict=False):
        inflater.push(sent[a:b])
        while inflater.pending:
            out += inflater.pull(limit)
    assert out == data


def test_garbage_raises_deflate_error():
    inflater = Inflater()
    inflater.push(b"\xff" * 64)
    try:
        while inflater.pending:
            inflater.pull(1024)
    except DeflateError:
        return
    raise AssertionError("garbage inflated")


def _compress_events() -> tuple[list[dict], object]:
    events: list[dict] = []

    def observer(event: dict) -> None:
        if event.get("event") == "imap_compress":
            events.append(event)

    globalLogPublisher.addObserver(observer)
    return events, observer


@pytest_twisted.ensureDeferred
async def test_mbsync_syncs_over_a_compressed_session(imap_host, tmp_path):
    host = await imap_host(kind="maildir")
    for i in range(3):
        await host.deliver(make_message(f"mbsync compressed {i}", size=30_000))
    local = tmp_path / "local"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        f"IMAPAccount mh\nHost 127.0.0.1\nPort {host.port}\nUser alice@example.test\n"
        "Pass secret\nSSLType None\nAuthMechs LOGIN\n\n"
        "IMAPStore mh-remote\nAccount mh\n\n"
        f"MaildirStore mh-local\nPath {local}/\nInbox {local}/INBOX\n\n"
        "Channel mh\nFar :mh-remote:\nNear :mh-local:\nPatterns INBOX\nCreate Near\n"
        "SyncState *\n")
    events, observer = _compress_events()
    try:
        res = await threads.deferToThread(subprocess.run, ["mbsync", "-c", str(rc), "-a"],
                                          capture_output=True, timeout=60)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert res.returncode == 0, res.stderr
    assert events, "mbsync did not turn on COMPRESS=DEFLATE"
    got = sorted(p.read_bytes() for sub in ("cur", "new") for p in (local / "INBOX" / sub).iterdir())
    assert len(got) == 3 and all(b"mbsync compressed" in m for m in got)


@pytest_twisted.ensureDeferred
async def test_mutt_with_imap_deflate_reads_the_inbox(imap_host, tmp_path):
    host = await imap_host(kind="maildir")
    for i in range(3):
        await host.deliver(make_message(f"mutt deflate {i}"))
    rc = tmp_path / "muttrc"
    rc.write_text(
        'set imap_user="alice@example.test"\nset imap_pass="secret"\n'
        "set ssl_starttls=no\nset ssl_force_tls=no\nset imap_deflate=yes\n"
        f'set folder="imap://127.0.0.1:{host.port}/"\nset spoolfile="+INBOX"\n'
        'set header_cache=""\nset message_cachedir=""\nset mark_old=no\nset move=no\n'
        "set quit=yes\nset wait_key=no\nset timeout=1\n")
    cmd = (f"mutt -n -F {rc} -f imap://127.0.0.1:{host.port}/INBOX "
           "-e 'push <first-entry><display-message><exit><quit>'")
    env = dict(os.environ, TERM="xterm", HOME=str(tmp_path))
    events, observer = _compress_events()
    try:
        res = await threads.deferToThread(
            subprocess.run, ["timeout", "25", "script", "-qec", cmd, "/dev/null"],
            capture_output=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    finally:
        globalLogPublisher.removeObserver(observer)
    out = res.stdout.decode("utf-8", "replace")
    assert res.returncode == 0, out[-2000:]
    assert "mutt deflate 0" in out and "mutt deflate 2" in out
    assert events, "mutt did not turn on COMPRESS=DEFLATE"
