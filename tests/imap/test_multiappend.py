"""MULTIAPPEND (RFC 3502) over a real socket: several messages in one APPEND, small and
streamed literals mixed, all or none, and a dropped command's streamed literals never
reaching the next APPEND."""

from __future__ import annotations

import socket

import pytest_twisted

from tests.imap.test_server_harness import imap_host_fixture, make_message  # noqa: F401


class Raw:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.f = self.sock.makefile("rb")
        self.f.readline()

    def line(self) -> bytes:
        return self.f.readline()

    def until(self, tag: bytes) -> list[bytes]:
        out = []
        while True:
            got = self.f.readline()
            out.append(got)
            if not got or got.startswith(tag + b" "):
                return out

    def cmd(self, line: bytes) -> list[bytes]:
        self.sock.sendall(line + b"\r\n")
        return self.until(line.split(b" ", 1)[0])

    def append(self, tag: bytes, head: bytes, parts: list[tuple[bytes, bytes]]) -> list[bytes]:
        """``tag APPEND head`` then, per message, its prefix (flags/date) and literal,
        waiting for each '+' as a synchronizing client does."""
        line = tag + b" APPEND " + head
        for prefix, message in parts:
            line += (b" " + prefix if prefix else b"") + b" {%d}" % len(message)
            self.sock.sendall(line + b"\r\n")
            got = self.line()
            if not got.startswith(b"+"):
                return [got]
            self.sock.sendall(message)
            line = b""
        self.sock.sendall(b"\r\n")
        return self.until(tag)


@pytest_twisted.ensureDeferred
async def test_several_messages_in_one_append(imap_host):
    host = await imap_host(kind="maildir")
    small = [make_message(f"multi {i}") for i in range(3)]
    big = make_message("multi big", size=300_000)  # streamed into the store as it arrives

    def run():
        c = Raw(host.port)
        c.cmd(b"L LOGIN alice@example.test secret")
        assert b"MULTIAPPEND" in b"".join(c.cmd(b"C CAPABILITY"))
        got = c.append(b"A", b"INBOX", [(b"(\\Seen)", small[0]), (b"", big),
                                        (b'(\\Flagged) " 7-Feb-1994 21:52:25 -0800"', small[1]),
                                        (b"", small[2])])
        assert got[-1].startswith(b"A OK [APPENDUID "), got
        validity, uids = got[-1].split()[3], got[-1].split()[4].rstrip(b"]")
        assert uids == b"1:4" and validity.isdigit()
        c.cmd(b"S EXAMINE INBOX")
        fetched = b"".join(c.cmd(b"F FETCH 1:4 (FLAGS INTERNALDATE RFC822.SIZE)"))
        assert b"* 1 FETCH (FLAGS (\\Recent \\Seen)" in fetched
        assert b"RFC822.SIZE %d" % len(big) in fetched
        assert b'* 3 FETCH (FLAGS (\\Flagged \\Recent) INTERNALDATE "08-Feb-1994 05:52:25 +0000"' \
            in fetched

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_all_or_none(imap_host):
    host = await imap_host(kind="maildir")

    def run():
        c = Raw(host.port)
        c.cmd(b"L LOGIN alice@example.test secret")
        # The third message carries an invalid flag: nothing is appended.
        got = c.append(b"A", b"INBOX", [(b"", make_message("one")), (b"", make_message("two")),
                                        (b"(\\Bogus)", make_message("three"))])
        assert got[-1].startswith(b"A BAD"), got
        # A missing mailbox: nothing either, and TRYCREATE.
        got = c.append(b"B", b"Nowhere", [(b"", make_message("one")), (b"", make_message("two"))])
        assert got[-1].startswith(b"B NO [TRYCREATE]"), got
        status = b"".join(c.cmd(b"S STATUS INBOX (MESSAGES)"))
        assert b"(MESSAGES 0)" in status

    await host.in_thread(run)


async def _third_append_fails(host) -> list[str]:
    """Make alice's third commit from now fail as a full disk would; the folder names
    the commits were asked for, as they come."""
    account = await host.store.open_account("alice@example.test")
    real_append = account.append
    calls: list[str] = []

    def append(name, writer, flags=(), internal_date=None, recent=True):
        calls.append(name)
        if len(calls) == 3:
            writer.abort()
            raise OSError(28, "No space left on device")
        return real_append(name, writer, flags, internal_date, recent)

    account.append = append
    return calls


@pytest_twisted.ensureDeferred
async def test_a_failing_later_message_takes_the_earlier_ones_back(imap_host):
    host = await imap_host(kind="maildir")
    calls = await _third_append_fails(host)

    def run():
        c = Raw(host.port)
        c.cmd(b"L LOGIN alice@example.test secret")
        got = c.append(b"A", b"INBOX", [(b"", make_message(f"m{i}")) for i in range(4)])
        assert got[-1].startswith(b"A NO"), got
        status = b"".join(c.cmd(b"S STATUS INBOX (MESSAGES)"))
        assert b"(MESSAGES 0)" in status

    await host.in_thread(run)
    assert len(calls) == 3


@pytest_twisted.ensureDeferred
async def test_messages_taken_back_get_no_exists_in_the_selected_mailbox(imap_host):
    """Regression: with INBOX selected, a MULTIAPPEND whose third message failed took the
    first two back, and the updates sent with the NO still said ``* 2 EXISTS`` for
    them: a UID added and expunged while queued passed the session's filter once the
    expunges were handed out (``SelectedMailbox.pending_updates``), and stayed in its
    numbering, never expunged."""
    host = await imap_host(kind="maildir")
    await _third_append_fails(host)

    def run():
        c = Raw(host.port)
        c.cmd(b"L LOGIN alice@example.test secret")
        c.cmd(b"S SELECT INBOX")
        got = c.append(b"A", b"INBOX", [(b"", make_message(f"m{i}")) for i in range(4)])
        assert got[-1].startswith(b"A NO"), got
        assert not any(b"EXISTS" in line for line in got), got
        got = c.cmd(b"N NOOP")
        assert not any(b"EXISTS" in line or b"EXPUNGE" in line for line in got), got
        got = c.cmd(b"F FETCH 1:* (UID)")  # the session numbers no message
        assert not any(b" FETCH " in line for line in got), got

    await host.in_thread(run)
