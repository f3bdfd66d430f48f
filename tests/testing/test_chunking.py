"""BDAT (RFC 3030 CHUNKING) and IMAP literals through the fault wrapper, over loopback.

The chunk octets and literals are message data the client sends without waiting for a
reply; the wrapper must pass them on at once (it once held them until the server
answered the BDAT, which waits for them: a hang). smtplib has no BDAT, so these tests
speak SMTP over a raw socket; every read has a deadline, so a hang fails the test.
"""

from __future__ import annotations

import socket
import time

import pytest

pytestmark = pytest.mark.mailhost(users={"alice@example.test": "secret"})

TIMEOUT = 5.0

# Chunk data with CRLFs and lines that look like commands; none may be run.
CHUNK1 = b"Subject: chunked\r\nFrom: x@remote.test\r\n\r\nfirst\r\nQUIT\r\n"
CHUNK2 = b"MAIL FROM:<inside@remote.test>\r\nRSET\r\nBDAT 99 LAST\r\n.\r\n"
CHUNK3 = b"\r\nQUIT\r\nlast line\r\n"


class RawSMTP:
    """A minimal SMTP client on a raw socket: send bytes, read final replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""
        assert self.replies(1)[0].startswith(b"220")

    def send(self, data: bytes, pieces: int = 1) -> None:
        """Send ``data``, cut into ``pieces`` writes (with pauses) to split it anywhere."""
        step = max(1, -(-len(data) // pieces))
        for i in range(0, len(data), step):
            self.sock.sendall(data[i: i + step])
            if pieces > 1:
                time.sleep(0.01)

    def replies(self, n: int) -> list[bytes]:
        """The next ``n`` final reply lines (multi-line replies count once)."""
        out: list[bytes] = []
        deadline = time.monotonic() + TIMEOUT
        while len(out) < n:
            while b"\r\n" in self.buf and len(out) < n:
                line, self.buf = self.buf.split(b"\r\n", 1)
                if line[3:4] != b"-":
                    out.append(line)
            if len(out) >= n:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"no reply within {TIMEOUT}s; got {out!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; got {out!r}")
            self.buf += chunk
        return out

    def codes(self, n: int) -> list[bytes]:
        return [r[:3] for r in self.replies(n)]

    def cmd(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.replies(1)[0]

    def start(self, ehlo: bool = True) -> None:
        if ehlo:
            self.sock.sendall(b"EHLO client.test\r\n")
            assert b"CHUNKING" in self._multiline()
        self.send(b"MAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
        assert self.codes(2) == [b"250", b"250"]

    def _multiline(self) -> bytes:
        text = b""
        deadline = time.monotonic() + TIMEOUT
        while not any(line[3:4] == b" " for line in text.split(b"\r\n")):
            assert time.monotonic() < deadline
            text += self.sock.recv(65536)
        return text

    def closed(self) -> bool:
        """True once the server has cut the connection (EOF or reset) within TIMEOUT."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                if not self.sock.recv(65536):
                    return True
            except ConnectionError:
                return True
            except TimeoutError:
                return False
        return False

    def close(self) -> None:
        self.sock.close()


def bdat(data: bytes, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n%s" % (len(data), b" LAST" if last else b"", data)


@pytest.fixture
def smtp(mailhost_sync):
    clients: list[RawSMTP] = []

    def connect() -> RawSMTP:
        clients.append(RawSMTP(mailhost_sync.smtp_port))
        return clients[-1]

    yield connect
    for c in clients:
        c.close()


def _stored(mailhost_sync, n: int) -> list[bytes]:
    """The raw messages that arrived, less the Return-Path and Received the server adds."""
    out = []
    for m in mailhost_sync.wait_for_messages(n):
        lines = m.raw.split(b"\r\n")
        while lines and (lines[0].startswith((b"Return-Path:", b"Received:"))
                         or lines[0][:1] in (b" ", b"\t")):
            lines.pop(0)
        out.append(b"\r\n".join(lines))
    return out


@pytest.mark.parametrize("pieces", [1, 7])
def test_bdat_without_faults(mailhost_sync, smtp, pieces):
    # A catch-all fault that must never fire: command-looking lines inside chunks.
    quit_fault = mailhost_sync.smtp.fail("QUIT", code=421, message="not the chunk", times=None)
    rset_fault = mailhost_sync.smtp.fail("RSET", code=421, message="not the chunk", times=None)
    c = smtp()
    c.start()
    # Pipelined: three chunks, the last one "BDAT 0 LAST", plus a NOOP, all in one go.
    c.send(bdat(CHUNK1) + bdat(CHUNK2) + bdat(CHUNK3) + b"BDAT 0 LAST\r\nNOOP\r\n", pieces)
    replies = c.replies(5)
    assert [r[:3] for r in replies] == [b"250"] * 5
    assert b"queued" in replies[3]
    # A one-chunk message with LAST on its only chunk.
    c.start(ehlo=False)
    c.send(bdat(CHUNK1 + CHUNK3, last=True), pieces)
    assert b"queued" in c.replies(1)[0]
    assert quit_fault.hits == rset_fault.hits == 0
    assert _stored(mailhost_sync, 2) == [CHUNK1 + CHUNK2 + CHUNK3, CHUNK1 + CHUNK3]
    assert c.cmd(b"QUIT")[:3] == b"421"  # the real QUIT does meet the fault
    assert quit_fault.hits == 1


def test_bdat_refused_by_the_server_still_consumes_its_chunk(mailhost_sync, smtp):
    c = smtp()
    c.cmd(b"EHLO client.test")
    # No MAIL: the server answers 503 but reads the chunk; "BDAT 3 nope" is bad syntax
    # and has no chunk, so "QUI" below is the start of a command line.
    c.send(bdat(b"QUIT\r\n") + b"BDAT 3 nope\r\nNOOP\r\n")
    assert c.codes(3) == [b"503", b"501", b"250"]


def test_fail_bdat(mailhost_sync, smtp):
    fault = mailhost_sync.smtp.fail("BDAT", code=452, message="4.3.1 out of space",
                                    match="LAST")
    c = smtp()
    c.start()
    c.send(bdat(CHUNK1) + bdat(CHUNK2, last=True) + b"NOOP\r\n")
    replies = c.replies(3)
    assert [r[:3] for r in replies] == [b"250", b"452", b"250"]
    assert replies[1] == b"452 4.3.1 out of space"
    assert fault.hits == 1
    # Like a refused chunk at a real server, the failure ended the transaction:
    # a further chunk needs a new MAIL, which is not "nested".
    c.send(bdat(CHUNK3, last=True))
    assert c.codes(1) == [b"503"]
    c.start(ehlo=False)
    c.send(bdat(CHUNK3, last=True))
    assert b"queued" in c.replies(1)[0]
    assert _stored(mailhost_sync, 1) == [CHUNK3]
    assert c.cmd(b"QUIT")[:3] == b"221"


def test_fail_bdat_zero_last_and_first_chunk(mailhost_sync, smtp):
    mailhost_sync.smtp.fail("BDAT", match="BDAT 0", times=1)
    c = smtp()
    c.start()
    c.send(bdat(CHUNK1) + b"BDAT 0 LAST\r\nNOOP\r\n")
    assert c.codes(3) == [b"250", b"451", b"250"]
    mailhost_sync.smtp.fail("BDAT", code=421, message="4.3.2 not now", times=1)
    c.start(ehlo=False)
    c.send(bdat(CHUNK1) + bdat(CHUNK2, last=True) + b"RSET\r\nNOOP\r\n")
    assert c.codes(4) == [b"421", b"503", b"250", b"250"]
    time.sleep(0.2)
    assert mailhost_sync.received == []


@pytest.mark.parametrize("pieces", [1, 5])
def test_delay_bdat(mailhost_sync, smtp, pieces):
    mailhost_sync.smtp.delay("BDAT", 0.5, match="LAST")
    c = smtp()
    c.start()
    c.send(bdat(CHUNK1), pieces)
    started = time.monotonic()
    assert c.codes(1) == [b"250"]
    assert time.monotonic() - started < 0.4
    # From before the send: the delay starts when the server has read BDAT LAST, which
    # can be before the last of ``pieces`` (10 ms apart) is sent.
    started = time.monotonic()
    c.send(bdat(CHUNK2, last=True) + b"NOOP\r\n", pieces)
    assert c.codes(2) == [b"250", b"250"]
    assert time.monotonic() - started >= 0.45
    assert _stored(mailhost_sync, 1) == [CHUNK1 + CHUNK2]


def test_delay_then_fail_bdat(mailhost_sync, smtp):
    mailhost_sync.smtp.delay("BDAT", 0.3)
    mailhost_sync.smtp.fail("BDAT", code=554, message="5.6.0 no")
    c = smtp()
    c.start()
    started = time.monotonic()
    c.send(bdat(CHUNK1 + b"QUIT\r\n", last=True) + b"NOOP\r\n")
    assert c.codes(2) == [b"554", b"250"]
    assert time.monotonic() - started >= 0.25


@pytest.mark.parametrize("chunks", [[CHUNK1, CHUNK2], [CHUNK1, b""], [b""]])
def test_drop_after_bdat_last_stores_nothing(mailhost_sync, smtp, chunks):
    fault = mailhost_sync.smtp.drop_after("BDAT", match="LAST")
    c = smtp()
    c.start()
    *first, final = chunks
    c.send(b"".join(bdat(x) for x in first))
    assert c.codes(len(first)) == [b"250"] * len(first)
    c.send(bdat(final, last=True))
    assert c.closed()
    assert fault.hits == 1
    with pytest.raises(TimeoutError):
        mailhost_sync.wait_for_messages(1, timeout=0.5)
    # Used up: the retry is stored once.
    c = smtp()
    c.start()
    c.send(b"".join(bdat(x) for x in first) + bdat(final, last=True))
    assert c.codes(len(chunks))[-1] == b"250"
    assert _stored(mailhost_sync, 1) == [b"".join(chunks)]


def test_drop_after_first_bdat(mailhost_sync, smtp):
    mailhost_sync.smtp.drop_after("BDAT")
    c = smtp()
    c.start()
    c.send(bdat(CHUNK1) + bdat(CHUNK2, last=True))
    assert c.closed()
    with pytest.raises(TimeoutError):
        mailhost_sync.wait_for_messages(1, timeout=0.5)


def test_faults_on_commands_around_bdat(mailhost_sync, smtp):
    mailhost_sync.smtp.fail("MAIL", code=451, message="4.7.1 greylisted", match="inside@")
    mailhost_sync.smtp.delay("NOOP", 0.3)
    c = smtp()
    c.start()
    c.send(bdat(CHUNK2, last=True) + b"NOOP\r\nMAIL FROM:<inside@remote.test>\r\n")
    started = time.monotonic()
    assert c.codes(3) == [b"250", b"250", b"451"]
    assert time.monotonic() - started >= 0.25
    assert _stored(mailhost_sync, 1) == [CHUNK2]


def test_bdat_on_submission_after_auth(mailhost_sync):
    # Submission goes through the same wrapper; BDAT after AUTH PLAIN.
    import base64

    c = RawSMTP(mailhost_sync.submission_port)
    try:
        c.cmd(b"EHLO client.test")
        token = base64.b64encode(b"\0alice@example.test\0secret")
        assert c.cmd(b"AUTH PLAIN " + token)[:3] == b"235"
        c.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<alice@example.test>\r\n"
               + bdat(CHUNK1) + bdat(CHUNK3, last=True))
        assert c.codes(4) == [b"250"] * 4
    finally:
        c.close()
    assert _stored(mailhost_sync, 1) == [CHUNK1 + CHUNK3]


# -- IMAP literals ------------------------------------------------------------------

LITERAL = b"Subject: lit\r\n\r\na9 LOGOUT\r\na8 SELECT INBOX\r\n"


class RawIMAP:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")
        assert self.file.readline().startswith(b"* OK")

    def line(self) -> bytes:
        return self.file.readline()

    def tagged(self, tag: bytes) -> bytes:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            line = self.file.readline()
            if not line:
                raise ConnectionError("closed")
            if line.startswith(tag + b" "):
                return line
        raise AssertionError("no tagged reply")

    def login(self) -> None:
        self.sock.sendall(b"a1 LOGIN alice@example.test secret\r\n")
        assert self.tagged(b"a1").startswith(b"a1 OK")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def imap(mailhost_sync):
    made: list[RawIMAP] = []

    def connect() -> RawIMAP:
        made.append(RawIMAP(mailhost_sync.imap_port))
        return made[-1]

    yield connect
    for c in made:
        c.close()


@pytest.mark.parametrize("delay", [False, True])
def test_imap_literals_pass_through(mailhost_sync, imap, delay):
    if delay:
        mailhost_sync.imap.delay("APPEND", 0.3, times=None)
    logout = mailhost_sync.imap.fail("LOGOUT", times=None)
    select = mailhost_sync.imap.fail("SELECT", times=None)
    c = imap()
    c.login()
    # LITERAL+ pipelined with a NOOP, in one packet.
    c.sock.sendall(b"a2 APPEND INBOX {%d+}\r\n%s\r\na3 NOOP\r\n" % (len(LITERAL), LITERAL))
    assert c.tagged(b"a2").startswith(b"a2 OK")
    assert c.tagged(b"a3").startswith(b"a3 OK")
    # A synchronizing literal: the client waits for "+", then sends it.
    c.sock.sendall(b"a4 APPEND INBOX {%d}\r\n" % len(LITERAL))
    assert c.line().startswith(b"+")
    c.sock.sendall(LITERAL + b"\r\n")
    assert c.tagged(b"a4").startswith(b"a4 OK")
    # Two literals in one command (LOGIN), both LITERAL+, split across writes.
    data = b"a5 LOGIN {18+}\r\nalice@example.test {6+}\r\nsecret\r\n"
    for i in range(0, len(data), 7):
        c.sock.sendall(data[i: i + 7])
        time.sleep(0.01)
    assert c.tagged(b"a5").startswith(b"a5 BAD")  # already logged in; no hang
    assert logout.hits == select.hits == 0
    assert len(mailhost_sync.messages("alice@example.test")) == 2


def test_imap_fail_with_synchronizing_literal(mailhost_sync, imap):
    mailhost_sync.imap.fail("APPEND", message="[OVERQUOTA] full")
    c = imap()
    c.login()
    c.sock.sendall(b"a2 APPEND INBOX {%d}\r\n" % len(LITERAL))
    assert c.line() == b"a2 NO [OVERQUOTA] full\r\n"  # instead of "+": no literal follows
    c.sock.sendall(b"a3 NOOP\r\n")
    assert c.tagged(b"a3").startswith(b"a3 OK")


@pytest.mark.parametrize("plus", [b"+", b""])
def test_imap_drop_after_append_with_literal(mailhost_sync, imap, plus):
    fault = mailhost_sync.imap.drop_after("APPEND")
    c = imap()
    c.login()
    c.sock.sendall(b"a2 APPEND INBOX {%d%s}\r\n" % (len(LITERAL), plus))
    if not plus:
        assert c.line().startswith(b"+")
    c.sock.sendall(LITERAL + b"\r\n")
    # The whole command reaches the server and runs; only its reply is lost.
    with pytest.raises((ConnectionError, OSError)):
        c.tagged(b"a2")
    assert fault.hits == 1
    deadline = time.monotonic() + TIMEOUT
    while not mailhost_sync.messages("alice@example.test") and time.monotonic() < deadline:
        time.sleep(0.05)
    [msg] = mailhost_sync.messages("alice@example.test")
    assert msg["Subject"] == "lit"
