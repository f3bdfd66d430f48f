"""Parser limits on a live ``twistd mailhost``: junk commands, line lengths, literals.

Memory checks sample the server's VmRSS while a hostile client is still connected:
a server that buffered the input would grow by at least the amount sent (32 MiB);
a bounded one grows by at most a few MiB of allocator noise.
"""

from __future__ import annotations

import base64
import time

import pytest

from tests.mailhost_process import rss_kib
from tests.security.hosts import PASSWORD, USER, TLSHost
from tests.security.wire import Wire

FLOOD = 32 * 1024 * 1024
CHUNK = b"A" * (1024 * 1024)
GROWTH_LIMIT_KIB = 12 * 1024


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = TLSHost(str(tmp_path_factory.mktemp("limits")), plaintext="yes").start()
    yield h
    h.kill()


def settle(host: TLSHost) -> int:
    time.sleep(0.3)
    return rss_kib(host.pid)


def flood(w: Wire, total: int = FLOOD) -> bool:
    """Send ``total`` bytes with no line end; False if the server closed meanwhile."""
    sent = 0
    try:
        while sent < total:
            w.sock.sendall(CHUNK)
            sent += len(CHUNK)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def assert_bounded(host: TLSHost, before: int) -> None:
    after = settle(host)
    assert after - before < GROWTH_LIMIT_KIB, f"RSS grew from {before} to {after} KiB"


def imap_login(w: Wire) -> None:
    w.line()
    w.send(f"l LOGIN {USER} {PASSWORD}\r\n".encode())
    assert w.tagged(b"l")[-1].startswith(b"l OK")


# -- SMTP ----------------------------------------------------------------------------


def test_smtp_junk_command_limit(host):
    with Wire(host.ports["smtp"]) as w:
        w.line()
        w.send(b"XJUNK\r\n" * 40)
        data = w.read_to_close()
    lines = data.split(b"\r\n")[:-1]
    assert lines[-1].startswith(b"421 4.7.0"), lines[-3:]
    errors = [ln for ln in lines if ln.startswith(b"5")]
    assert len(errors) == 20  # smtp.max_junk_commands, then 421 and close
    assert host.alive()


@pytest.mark.parametrize("in_data", [False, True])
def test_smtp_endless_line_uses_bounded_memory(host, in_data):
    with Wire(host.ports["smtp"]) as w:
        w.line()
        if in_data:
            w.send(b"EHLO c.test\r\nMAIL FROM:<bob@example.test>\r\n"
                   b"RCPT TO:<alice@example.test>\r\nDATA\r\n")
            assert w.until(lambda ln: ln.startswith(b"354"))[-1].startswith(b"354")
        before = settle(host)
        still_open = flood(w)
        assert_bounded(host, before)
        if still_open:
            w.send(b"\r\n.\r\n" if in_data else b"\r\nNOOP\r\n")
            reply = w.smtp_reply()[-1]
            # Command mode: the long line is an error. DATA: the message is refused.
            assert reply[:1] in (b"5", b"4"), reply
    assert host.alive()


# -- POP3 ----------------------------------------------------------------------------


def test_pop3_endless_line_uses_bounded_memory(host):
    with Wire(host.ports["pop3"]) as w:
        w.line()
        before = settle(host)
        still_open = flood(w)
        assert_bounded(host, before)
        if still_open:
            w.send(b"\r\n")
            assert w.line().startswith(b"-ERR")
    assert host.alive()


# -- IMAP ----------------------------------------------------------------------------


@pytest.mark.parametrize("logged_in", [False, True])
def test_imap_endless_line_uses_bounded_memory(host, logged_in):
    with Wire(host.ports["imap"]) as w:
        if logged_in:
            imap_login(w)
        else:
            w.line()
        before = settle(host)
        still_open = flood(w)
        assert_bounded(host, before)
        if still_open:
            w.send(b"\r\nz NOOP\r\n")
            lines = w.tagged(b"z")
            assert any(b"BAD" in ln for ln in lines)
    assert host.alive()


@pytest.mark.parametrize("size", [b"99999999999", b"18446744073709551621", b"-1",
                                  b"1" + b"0" * 400])
@pytest.mark.parametrize("logged_in", [False, True])
def test_imap_huge_or_negative_literal_refused_without_continuation(host, size, logged_in):
    with Wire(host.ports["imap"]) as w:
        if logged_in:
            imap_login(w)
            w.send(b"a APPEND INBOX {" + size + b"}\r\n")
        else:
            w.line()
            w.send(b"a LOGIN {" + size + b"}\r\n")
        first = w.line()
        assert not first.startswith(b"+"), "server invited a literal it cannot take"
        assert first.startswith((b"a NO", b"a BAD")), first
        w.send(b"b NOOP\r\n")
        assert w.tagged(b"b")[-1].startswith(b"b OK")


def test_imap_huge_nonsync_literal_uses_bounded_memory(host):
    with Wire(host.ports["imap"]) as w:
        imap_login(w)
        before = settle(host)
        w.send(b"a APPEND INBOX {99999999999+}\r\n")
        flood(w)
        assert_bounded(host, before)
    assert host.alive()


def test_imap_large_literal_in_a_search_uses_bounded_memory(host):
    """A 32 MiB literal is under imap.max_literal_size (64 MiB) but is not a message:
    nothing needs it whole in memory."""
    with Wire(host.ports["imap"]) as w:
        imap_login(w)
        w.send(b"s SELECT INBOX\r\n")
        w.tagged(b"s")
        before = settle(host)
        w.send(b"a SEARCH TEXT {%d}\r\n" % FLOOD)
        first = w.line()
        if first.startswith(b"+"):
            flood(w)
            # The literal is complete, the command line is not: the server now holds
            # whatever it kept of the literal.
            peak = settle(host)
            w.send(b"\r\n")
            w.tagged(b"a")
            assert peak - before < GROWTH_LIMIT_KIB, f"RSS grew from {before} to {peak} KiB"
        else:
            assert first.startswith((b"a NO", b"a BAD")), first
    assert host.alive()


def test_imap_append_streams_a_large_message(host):
    body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (FLOOD // 1000)
    with Wire(host.ports["imap"]) as w:
        imap_login(w)
        before = settle(host)
        w.send(b"a APPEND INBOX {%d}\r\n" % len(body))
        assert w.line().startswith(b"+")
        w.sock.sendall(body)
        peak = settle(host)
        w.send(b"\r\n")
        assert w.tagged(b"a")[-1].startswith(b"a OK")
        assert peak - before < GROWTH_LIMIT_KIB, f"RSS grew from {before} to {peak} KiB"


@pytest.mark.parametrize("command", [
    b"a SEARCH " + b"(" * 100_000 + b"ALL" + b")" * 100_000,
    b"a SEARCH " + b"NOT " * 100_000 + b"ALL",
    b"a SEARCH " + b"OR ALL " * 50_000 + b"ALL",
    b"a FETCH 1 " + b"(" * 100_000 + b"FLAGS" + b")" * 100_000,
    b"a ID " + b"(" * 100_000,
])
def test_imap_deep_nesting_is_refused_not_crashed(host, command):
    with Wire(host.ports["imap"]) as w:
        imap_login(w)
        w.send(b"s SELECT INBOX\r\n")
        w.tagged(b"s")
        w.send(command + b"\r\n")
        reply = w.tagged(b"a")[-1]
        assert reply.startswith((b"a BAD", b"a NO")), reply[:200]
        w.send(b"b NOOP\r\n")
        assert w.tagged(b"b")[-1].startswith(b"b OK")
    log = host.log_text()
    assert "RecursionError" not in log and "Traceback" not in log


def test_smtp_auth_line_limit(host):
    """An endless SASL response is refused like any other overlong line."""
    with Wire(host.ports["submission"]) as w:
        w.line()
        w.send(b"EHLO c.test\r\nAUTH PLAIN\r\n")
        w.smtp_reply()
        assert w.line().startswith(b"334")
        w.send(base64.b64encode(b"x" * 3_000_000) + b"\r\n")
        reply = w.smtp_reply()[-1]
        assert reply[:1] in (b"5", b"4"), reply
    assert host.alive()


@pytest.mark.parametrize("in_transaction", [False, True])
def test_smtp_huge_bdat_chunk_uses_bounded_memory(host, in_transaction):
    """RFC 3030 makes the server read a refused chunk; it must not keep it."""
    with Wire(host.ports["smtp"]) as w:
        w.line()
        if in_transaction:
            w.send(b"EHLO c.test\r\nMAIL FROM:<bob@example.test>\r\n"
                   b"RCPT TO:<alice@example.test>\r\n")
            w.smtp_reply()
            w.smtp_reply()
            w.smtp_reply()
        before = settle(host)
        w.send(b"BDAT 99999999999 LAST\r\n")
        flood(w)
        assert_bounded(host, before)
    assert host.alive()
