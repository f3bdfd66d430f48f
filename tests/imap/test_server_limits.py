"""Limits and hostile input against the live server: long lines, big literals,
STARTTLS injection (CVE-2011-0411), junk, timeouts, too many errors."""

from __future__ import annotations

import socket
import ssl
import time

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailhost.imap.framing import FramedCommand, Framer, NeedContinuation
from mailhost.imap.parser import literal_marker
from tests.imap.test_server_harness import imap_host_fixture  # noqa: F401


class Conn:
    """A raw blocking client socket with line reads (for use in a thread)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return self.file.readline()

    def until(self, tag: bytes, limit: int = 1000) -> list[bytes]:
        out = []
        for _ in range(limit):
            line = self.file.readline()
            if not line:
                break
            out.append(line)
            if line.startswith(tag + b" "):
                break
        return out

    def cmd(self, line: bytes) -> list[bytes]:
        self.send(line + b"\r\n")
        return self.until(line.split(b" ", 1)[0])

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest_twisted.ensureDeferred
async def test_line_too_long_is_bad_and_resyncs(imap_host):
    host = await imap_host(max_line_length=1000)

    def run():
        c = Conn(host.port)
        c.send(b"A1 NOOP " + b"x" * 5000 + b"\r\n")
        assert c.line().startswith(b"A1 BAD Line too long")
        assert c.cmd(b"A2 NOOP")[-1].startswith(b"A2 OK")
        # Also when the over-long line arrives in pieces.
        c.send(b"A3 LOGIN " + b"y" * 600)
        c.send(b"y" * 600)
        c.send(b"\r\nA4 NOOP\r\n")
        assert c.line().startswith(b"A3 BAD Line too long")
        assert c.line().startswith(b"A4 OK")
        c.close()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_literal_over_limit(imap_host):
    host = await imap_host(max_literal_size=1000)

    def run():
        c = Conn(host.port)
        assert c.cmd(b"L LOGIN alice@example.test secret")[-1].startswith(b"L OK")
        # Synchronizing: refused before the '+', the client sends nothing more.
        c.send(b"A1 APPEND INBOX {5000}\r\n")
        assert c.line().startswith(b"A1 NO [TOOBIG]")
        # Non-synchronizing: the octets are swallowed, then the reply.
        c.send(b"A2 APPEND INBOX {5000+}\r\n" + b"z" * 5000 + b"\r\n")
        assert c.line().startswith(b"A2 NO [TOOBIG]")
        assert c.cmd(b"A3 NOOP")[-1].startswith(b"A3 OK")
        # Within the limit both kinds work.
        c.send(b"A4 APPEND INBOX {20}\r\n")
        assert c.line().startswith(b"+")
        c.send(b"Subject: x\r\n\r\nbody\r\n\r\n")
        assert c.until(b"A4")[-1].startswith(b"A4 OK [APPENDUID")
        c.send(b"A5 APPEND INBOX (\\Seen) {20+}\r\nSubject: y\r\n\r\nbody\r\n\r\n")
        assert c.until(b"A5")[-1].startswith(b"A5 OK [APPENDUID")
        c.close()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_starttls_injection_does_not_run_pipelined_commands(imap_host):
    host = await imap_host(tls=True, allow_plaintext="no")

    def run():
        c = Conn(host.port)
        assert b"STARTTLS" in c.greeting and b"LOGINDISABLED" in c.greeting
        # One packet: STARTTLS plus commands that must be discarded, not run over TLS.
        c.send(b"A1 STARTTLS\r\nA2 LOGIN alice@example.test secret\r\nA3 CREATE Injected\r\n")
        assert c.line().startswith(b"A1 OK")
        ctx = ssl.create_default_context(cafile=host.cafile)
        ctx.check_hostname = False
        tls = ctx.wrap_socket(c.sock, server_hostname="localhost")
        f = tls.makefile("rb")
        tls.sendall(b"B1 CAPABILITY\r\n")
        lines = [f.readline(), f.readline()]
        assert lines[0].startswith(b"* CAPABILITY") and b"STARTTLS" not in lines[0]
        assert b"AUTH=PLAIN" in lines[0] and b"LOGINDISABLED" not in lines[0]
        assert lines[1].startswith(b"B1 OK")
        # A2 never ran: still not authenticated.
        tls.sendall(b"B2 SELECT INBOX\r\n")
        assert f.readline().startswith(b"B2 BAD")
        tls.sendall(b"B3 LOGIN alice@example.test secret\r\n")
        assert f.readline().startswith(b"B3 OK")
        tls.sendall(b'B4 LIST "" Injected\r\n')
        assert f.readline().startswith(b"B4 OK")  # no * LIST: A3 never ran
        tls.sendall(b"B5 STARTTLS\r\n")
        assert f.readline().startswith(b"B5 BAD")
        tls.close()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_too_many_bad_commands_closes(imap_host):
    host = await imap_host()

    def run():
        c = Conn(host.port)
        c.send(b"".join(b"X%d BOGUS\r\n" % i for i in range(30)))
        lines = c.until(b"never", limit=100)
        assert any(x.startswith(b"* BYE") for x in lines)
        assert sum(1 for x in lines if b" BAD " in x) == 20
        assert c.line() == b""  # closed
        c.close()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_preauth_and_auth_timeouts(imap_host):
    host = await imap_host(preauth_timeout=0.3, timeout=0.6)

    def run():
        c = Conn(host.port)
        t0 = time.monotonic()
        assert c.line().startswith(b"* BYE")
        assert c.line() == b""
        assert time.monotonic() - t0 < 3
        c.close()
        c = Conn(host.port)
        assert c.cmd(b"L LOGIN alice@example.test secret")[-1].startswith(b"L OK")
        time.sleep(0.4)  # past preauth_timeout, within timeout
        assert c.cmd(b"N NOOP")[-1].startswith(b"N OK")
        assert c.line().startswith(b"* BYE")
        c.close()

    await host.in_thread(run)


_junk_line = st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@pytest_twisted.ensureDeferred
async def test_junk_lines_always_answered(imap_host):
    host = await imap_host(max_line_length=200)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(lines=st.lists(_junk_line, min_size=1, max_size=6), login=st.booleans())
    def check(lines, login):
        c = Conn(host.port)
        try:
            if login:
                c.cmd(b"L LOGIN alice@example.test secret")
                c.cmd(b"S SELECT INBOX")
            for line in lines:
                if literal_marker(line) is not None:
                    line += b" x"  # a literal would swallow what follows; tested elsewhere
                c.send(line + b"\r\n")
            c.send(b"ZZ NOOP\r\n")
            got = c.until(b"ZZ", limit=5000)
            assert got, "server sent nothing"
            assert got[-1].startswith(b"ZZ OK") or any(g.startswith(b"* BYE") for g in got)
        finally:
            c.close()

    await host.in_thread(check)
    # The listener still serves normal clients afterwards.

    def after():
        c = Conn(host.port)
        assert c.cmd(b"A NOOP")[-1].startswith(b"A OK")
        c.close()

    await host.in_thread(after)


@given(data=st.binary(max_size=2000), cut=st.integers(1, 50))
@settings(max_examples=200, deadline=None)
def test_framer_junk_never_crashes_and_bounds_memory(data, cut):
    f = Framer(max_line=100, max_literal=300)
    for i in range(0, len(data), cut):
        f.feed(data[i:i + cut])
        for _ in range(10000):
            ev = f.next_event()
            if ev is None:
                break
            if isinstance(ev, FramedCommand):
                assert sum(len(s) for s in ev.segments) <= f.max_command
            else:
                assert not isinstance(ev, NeedContinuation) or ev.tag
        assert f.buffered <= len(data)


def test_framer_literals_and_continuations():
    f = Framer(max_line=100, max_literal=1000)
    f.feed(b"A1 LOGIN {5}\r\nalice {6+}\r\nsec")
    assert isinstance(f.next_event(), NeedContinuation)
    assert f.next_event() is None
    f.feed(b"ret\r\n")
    ev = f.next_event()
    assert ev == FramedCommand([b"A1 LOGIN {5}", b"alice", b" {6+}", b"secret", b""])


@pytest_twisted.ensureDeferred
async def test_starttls_and_implicit_tls_allow_login(imap_host):
    from twisted.internet import reactor
    from twisted.internet.endpoints import SSL4ServerEndpoint

    host = await imap_host(tls=True, allow_plaintext="no")
    ctx = ssl.create_default_context(cafile=host.cafile)
    ctx.check_hostname = False
    implicit = await SSL4ServerEndpoint(reactor, 0, host.factory.tls_options,
                                        interface="127.0.0.1").listen(host.factory)

    def run():
        import imaplib

        c = imaplib.IMAP4("127.0.0.1", host.port, timeout=10)
        assert "LOGINDISABLED" in c.capabilities
        c.starttls(ssl_context=ctx)
        assert "AUTH=PLAIN" in c.capabilities and "STARTTLS" not in c.capabilities
        assert c.login("alice@example.test", "secret")[0] == "OK"
        c.logout()
        s = imaplib.IMAP4_SSL("127.0.0.1", implicit.getHost().port, ssl_context=ctx, timeout=10)
        assert "STARTTLS" not in s.capabilities and "AUTH=PLAIN" in s.capabilities
        assert s.login("alice@example.test", "secret")[0] == "OK"
        s.logout()

    try:
        await host.in_thread(run)
    finally:
        await implicit.stopListening()


@pytest_twisted.ensureDeferred
async def test_idle_is_bounded_by_the_session_timeout(imap_host):
    host = await imap_host(timeout=0.5)

    def run():
        c = Conn(host.port)
        c.cmd(b"L LOGIN alice@example.test secret")
        c.cmd(b"S SELECT INBOX")
        c.send(b"I IDLE\r\n")
        assert c.line().startswith(b"+ idling")
        t0 = time.monotonic()
        assert c.line().startswith(b"* BYE")
        assert 0.3 < time.monotonic() - t0 < 3
        c.close()

    await host.in_thread(run)


_literal_cmd = st.tuples(
    st.sampled_from([b"A1 LOGIN ", b"A2 APPEND INBOX ", b"A3 SELECT ", b"A4 ", b"", b"A5 CREATE "]),
    # No "ZZ": that is the closing NOOP's tag, and junk tagged ZZ (a BAD) would be taken
    # for its answer.
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")
                               .replace(b"ZZ", b"Zz")),
    st.binary(max_size=100),
)


@pytest_twisted.ensureDeferred
async def test_junk_literals_always_answered(imap_host):
    host = await imap_host(max_line_length=200, max_literal_size=80)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(cmds=st.lists(_literal_cmd, min_size=1, max_size=4), login=st.booleans())
    def check(cmds, login):
        c = Conn(host.port)
        try:
            if login:
                c.cmd(b"L LOGIN alice@example.test secret")
            for head, junk, lit in cmds:
                line = head + junk
                if literal_marker(line) is not None:
                    line += b" x"
                # A non-synchronizing literal (maybe over the limit), then the line's end.
                c.send(line + b" {%d+}\r\n" % len(lit) + lit + b"\r\n")
            c.send(b"ZZ NOOP\r\n")
            got = c.until(b"ZZ", limit=5000)
            assert got, "server sent nothing"
            assert got[-1].startswith(b"ZZ OK") or any(g.startswith(b"* BYE") for g in got)
        finally:
            c.close()

    await host.in_thread(check)


@pytest_twisted.ensureDeferred
async def test_client_that_stops_reading_is_cut_off(imap_host):
    from mailhost.imap import server

    host = await imap_host(timeout=0.5)
    for i in range(3):
        await host.deliver(b"Subject: big %d\r\n\r\n" % i + b"z" * (4 * 1024 * 1024))
    old, server.CLOSE_GRACE = server.CLOSE_GRACE, 0.5

    def run():
        c = Conn(host.port)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.cmd(b"L LOGIN alice@example.test secret")
        c.cmd(b"S SELECT INBOX")
        c.send(b"F FETCH 1:* BODY.PEEK[]\r\n")
        time.sleep(3)  # never read: the server blocks on backpressure, then times out
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and host.factory.sessions:
            time.sleep(0.1)
        gone = not host.factory.sessions
        c.close()
        return gone

    try:
        assert await host.in_thread(run)
    finally:
        server.CLOSE_GRACE = old
