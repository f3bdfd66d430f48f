"""Hostile client sessions for SMTP, POP3 and IMAP, as hypothesis strategies.

A session is: a protocol, optionally a valid login, a list of chunks (valid commands,
junk bytes, overlong lines, NUL bytes, bare CR/LF, huge or negative literal sizes,
deep parentheses, DATA/literal bodies cut short) and an ending: a probe that must
get an answer, an abrupt close, a reset, or a half-close that the server must
answer by closing. ``run_session`` plays one against a live server and raises
``SessionHang`` if the server neither answers nor closes in time.

Shared by tests/security/test_fuzz.py (CI-sized) and bench/fuzz_soak.py (10,000+).
"""

from __future__ import annotations

import base64
import socket
import struct
import time
from dataclasses import dataclass

from hypothesis import strategies as st

USER, PASSWORD = "alice@example.test", "alice-pw"
PROTOCOLS = ("smtp", "pop3", "imap")
ANSWER_TIMEOUT = 20.0

# Literal sizes a client may announce: small ones the padding in the probe covers,
# and ones no server may accept (negative, over every limit, over 64 bits).
SMALL_LITERALS = st.integers(0, 150)
HOSTILE_LITERALS = st.sampled_from([-1, -99999, 99999999999, 2**63, 2**64 + 5, 10**40])

JUNK = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.integers(70_000, 400_000).map(lambda n: b"A" * n + b"\r\n"),  # overlong line
    st.integers(1, 4096).map(lambda n: b"\0" * n),
    st.sampled_from([b"\r", b"\n", b"\r\r\n", b"\n\r", b"\r\n\r\n", b"\r" * 1000,
                     b"\n" * 1000]),
    st.text(min_size=1, max_size=80).map(lambda t: t.encode("utf-8") + b"\r\n"),
    st.binary(max_size=40).map(lambda b: b + b"\r\n"),
)


def _line(*parts: bytes) -> bytes:
    return b" ".join(parts) + b"\r\n"


SMTP_COMMANDS = st.one_of(
    st.sampled_from([
        b"EHLO fuzz.test\r\n", b"HELO fuzz.test\r\n", b"RSET\r\n", b"NOOP\r\n",
        b"VRFY alice\r\n", b"EXPN list\r\n", b"HELP\r\n", b"STARTTLS\r\n",
        b"MAIL FROM:<alice@example.test>\r\n", b"MAIL FROM:<>\r\n",
        b"MAIL FROM:<a@b> SIZE=99999999999999999999\r\n", b"MAIL FROM:<a@b> BODY=8BITMIME\r\n",
        b"RCPT TO:<bob@example.test>\r\n", b"RCPT TO:<nobody@example.test>\r\n",
        b"RCPT TO:<x@remote.example>\r\n", b"RCPT TO:<../../etc/passwd@example.test>\r\n",
        b"RCPT TO:<\"a\\\"b\"@example.test> NOTIFY=NEVER\r\n",
        b"DATA\r\n", b"AUTH PLAIN\r\n", b"AUTH LOGIN\r\n", b"AUTH CRAM-MD5\r\n",
        b"AUTH PLAIN ====\r\n", b"AUTH PLAIN " + base64.b64encode(b"\0\0\0") + b"\r\n",
        b"MAIL FROM:<" + b"a" * 5000 + b"@example.test>\r\n",
        b".\r\n", b"..\r\n", b"Subject: x\r\n\r\nbody\r\n.\r\n",
        b"Received: from x\r\n" * 60 + b"\r\n.\r\n",
        b"QUIT\r\n",
    ]),
    st.tuples(st.sampled_from([b"MAIL FROM:", b"RCPT TO:", b"EHLO", b"VRFY", b"AUTH"]),
              st.binary(max_size=60)).map(lambda t: t[0] + t[1] + b"\r\n"),
    # CHUNKING: small chunks the probe's padding covers, and sizes no server may take.
    st.tuples(st.one_of(SMALL_LITERALS, HOSTILE_LITERALS), st.booleans(),
              st.binary(max_size=150))
    .map(lambda t: b"BDAT " + str(t[0]).encode() + (b" LAST" if t[1] else b"") + b"\r\n"
         + t[2]),
)

POP3_COMMANDS = st.one_of(
    st.sampled_from([
        b"USER alice@example.test\r\n", b"PASS wrong\r\n", b"PASS\r\n", b"STAT\r\n",
        b"LIST\r\n", b"LIST 1\r\n", b"LIST 0\r\n", b"LIST -1\r\n", b"LIST 99999999999999\r\n",
        b"RETR 1\r\n", b"RETR 0\r\n", b"TOP 1 0\r\n", b"TOP 1 -5\r\n", b"TOP 1 999999999\r\n",
        b"DELE 1\r\n", b"RSET\r\n", b"UIDL\r\n", b"UIDL 1\r\n", b"NOOP\r\n", b"CAPA\r\n",
        b"STLS\r\n", b"AUTH\r\n", b"AUTH PLAIN\r\n", b"AUTH PLAIN ====\r\n", b"AUTH XYZ\r\n",
        b"APOP alice 0123456789abcdef0123456789abcdef\r\n", b"LAST\r\n", b"*\r\n",
        b"QUIT\r\n",
    ]),
    st.tuples(st.sampled_from([b"USER", b"PASS", b"LIST", b"RETR", b"TOP", b"DELE", b"AUTH"]),
              st.binary(max_size=40)).map(lambda t: t[0] + b" " + t[1] + b"\r\n"),
)


def _literal(n: int, plus: bool) -> bytes:
    return b"{" + str(n).encode() + (b"+" if plus else b"") + b"}\r\n"


IMAP_COMMANDS = st.one_of(
    st.sampled_from([
        b"a CAPABILITY\r\n", b"a NOOP\r\n", b"a LOGOUT\r\n", b"a STARTTLS\r\n",
        b"a LOGIN alice wrong\r\n", b"a AUTHENTICATE PLAIN\r\n", b"a AUTHENTICATE XYZ\r\n",
        b"a SELECT INBOX\r\n", b"a EXAMINE INBOX\r\n", b"a SELECT \"../../etc\"\r\n",
        b"a CREATE \"../../../tmp/evil\"\r\n", b"a CREATE \"a/../../b\"\r\n",
        b"a CREATE fuzz\r\n", b"a DELETE fuzz\r\n", b"a RENAME fuzz fuzz2\r\n",
        b"a LIST \"\" *\r\n", b"a LIST \"\" %\r\n", b"a LSUB \"\" *\r\n",
        b"a STATUS INBOX (MESSAGES UIDNEXT UNSEEN)\r\n",
        b"a FETCH 1:* (FLAGS UID ENVELOPE BODYSTRUCTURE)\r\n",
        b"a FETCH 1 BODY[]<0.10>\r\n", b"a FETCH 1 BODY.PEEK[1.2.3.HEADER]\r\n",
        b"a FETCH 4294967295:* FLAGS\r\n", b"a FETCH 0 FLAGS\r\n", b"a FETCH * BODY[]<9999999999.5>\r\n",
        b"a UID FETCH 1:* (FLAGS)\r\n", b"a STORE 1:* +FLAGS (\\Seen $junk)\r\n",
        b"a SEARCH ALL\r\n", b"a SEARCH TEXT hello\r\n", b"a SEARCH OR OR OR 1 2 3 4\r\n",
        b"a SEARCH CHARSET X-UNKNOWN TEXT a\r\n", b"a SEARCH NOT NOT NOT NOT ALL\r\n",
        b"a SEARCH RETURN (SAVE MIN) SUBJECT a\r\n", b"a FETCH $ FLAGS\r\n",
        b"a UID SORT RETURN (ALL) (REVERSE DATE SUBJECT) UTF-8 $\r\n",
        b"a SORT (DISPLAYFROM SIZE) UTF-8 OLDER 1\r\n", b"a THREAD REFERENCES UTF-8 ALL\r\n",
        b"a UID THREAD ORDEREDSUBJECT US-ASCII YOUNGER 99\r\n", b"a SORT () UTF-8 ALL\r\n",
        b"a COPY 1:* INBOX\r\n", b"a MOVE 1 Trash\r\n", b"a EXPUNGE\r\n", b"a CLOSE\r\n",
        b"a UNSELECT\r\n", b"a IDLE\r\n", b"DONE\r\n", b"a ENABLE X\r\n",
        b"a ID (\"name\" \"fuzz\")\r\n", b"a NAMESPACE\r\n", b"* OK\r\n", b"+\r\n",
        b"a APPEND INBOX (\\Seen) \"01-Jan-2020 00:00:00 +0000\" {5}\r\nhello\r\n",
    ]),
    st.integers(1, 100_000).map(lambda d: b"a SEARCH " + b"(" * d + b"ALL" + b")" * (d // 2)
                                + b"\r\n"),
    st.integers(1, 100_000).map(lambda d: b"a FETCH 1 " + b"(" * d + b"\r\n"),
    st.integers(1, 50_000).map(lambda d: b"a ID " + b"(" * d + b"\r\n"),
    st.tuples(st.sampled_from([b"a LOGIN ", b"a APPEND INBOX ", b"a SEARCH TEXT ",
                               b"a SELECT ", b"a CREATE "]),
              st.one_of(SMALL_LITERALS, HOSTILE_LITERALS), st.booleans(),
              st.binary(max_size=150))
    .map(lambda t: t[0] + _literal(t[1], t[2]) + t[3]),
    st.tuples(st.sampled_from([b"a", b"*", b"+", b"x" * 100, b"\0"]),
              st.sampled_from([b"LOGIN", b"FETCH", b"UID", b"SEARCH", b"STORE", b"SELECT",
                               b"SORT", b"THREAD"]),
              st.binary(max_size=60)).map(lambda t: _line(t[0], t[1], t[2])),
)

COMMANDS = {"smtp": SMTP_COMMANDS, "pop3": POP3_COMMANDS, "imap": IMAP_COMMANDS}

LOGINS = {
    "smtp": b"EHLO fuzz.test\r\nAUTH PLAIN "
            + base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()) + b"\r\n",
    "pop3": f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode(),
    "imap": f"l LOGIN {USER} {PASSWORD}\r\n".encode(),
}

# Sent last when the session must still be answered. It closes whatever the junk
# left open: a DATA body (".") or an IDLE ("DONE"), a small literal (padding), a SASL
# exchange (a line), then asks a question whose answer ends the check.
PROBES = {
    "smtp": b"x" * 200 + b"\r\n.\r\nRSET\r\nNOOP\r\n",
    "pop3": b"\r\n*\r\nNOOP\r\n",
    "imap": b"x" * 200 + b"\r\nDONE\r\nzz NOOP\r\n",
}


def _probe_answered(proto: str, data: bytes) -> bool:
    if proto == "imap":
        return b"\nzz " in data or data.startswith(b"zz ") or b"* BYE" in data
    if proto == "smtp":
        return any(ln[:3] in (b"250", b"421", b"221") for ln in data.split(b"\n"))
    return b"+OK" in data or b"-ERR" in data


@dataclass
class Session:
    proto: str
    login: bool
    chunks: list[bytes]
    ending: str  # "probe", "close", "rst", "halfclose"

    @property
    def may_start_tls(self) -> bool:
        """After a STARTTLS/STLS go-ahead the rest is a (garbage) TLS handshake, which
        the server may wait on until its command timeout (minutes): no probe answer."""
        return any(c.startswith((b"STARTTLS", b"STLS", b"a STARTTLS")) for c in self.chunks)

    @property
    def has_endless_literal(self) -> bool:
        """A non-synchronizing literal or BDAT chunk the server may legitimately
        swallow for ever (or until its timeout)."""
        huge = [str(n).encode() for n in (99999999999, 2**63, 2**64 + 5, 10**40)]
        return any((b"{" + n + b"+}") in c or c.startswith(b"BDAT " + n)
                   for c in self.chunks for n in huge)


@st.composite
def sessions(draw, protocols=PROTOCOLS) -> Session:
    proto = draw(st.sampled_from(protocols))
    chunks = draw(st.lists(st.one_of(COMMANDS[proto], COMMANDS[proto], JUNK),
                           min_size=1, max_size=12))
    ending = draw(st.sampled_from(["probe", "probe", "probe", "close", "rst", "halfclose"]))
    return Session(proto, draw(st.booleans()), chunks, ending)


class SessionHang(AssertionError):
    """The server neither answered nor closed within ANSWER_TIMEOUT."""


def _read_some(sock: socket.socket, wait: float) -> bytes | None:
    """Bytes available within ``wait``; b"" on close; None on timeout."""
    sock.settimeout(wait)
    try:
        return sock.recv(65536)
    except (TimeoutError, BlockingIOError):
        return None
    except (ConnectionResetError, BrokenPipeError):
        return b""


def run_session(session: Session, port: int, host: str = "127.0.0.1") -> str:
    """Play ``session``; return how it ended ("answered", "closed", "dropped")."""
    sock = socket.create_connection((host, port), timeout=ANSWER_TIMEOUT)
    try:
        greeting = b""
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while b"\n" not in greeting:
            got = _read_some(sock, max(0.01, deadline - time.monotonic()))
            if got is None:
                raise SessionHang(f"{session.proto}: no greeting")
            if got == b"":
                return "closed"
            greeting += got
        payload = (LOGINS[session.proto] if session.login else b"") + b"".join(session.chunks)
        closed, _ = _send_all_draining(sock, payload)
        if closed:
            return "closed"
        if session.ending == "close":
            return "dropped"
        if session.ending == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return "dropped"
        if session.ending == "halfclose":
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:  # the server closed first (e.g. after junk): a clean end too
                return "closed"
            return _await(sock, session, lambda data: False)
        if session.has_endless_literal or session.may_start_tls:
            return "dropped"
        _drain(sock)
        closed, early = _send_all_draining(sock, PROBES[session.proto])
        if closed:
            return "closed"
        return _await(sock, session, lambda data: _probe_answered(session.proto, data), early)
    finally:
        sock.close()


def _await(sock: socket.socket, session: Session, answered, data: bytes = b"") -> str:
    """Read until ``answered(data)`` or the server closes; SessionHang otherwise."""
    if answered(data):
        return "answered"
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SessionHang(f"{session.proto} {session.ending}: last bytes {data[-200:]!r}")
        got = _read_some(sock, left)
        if got is None:
            continue
        if got == b"":
            return "closed"
        data = (data + got)[-65536:]
        if answered(data):
            return "answered"


def _drain(sock: socket.socket) -> None:
    """Read what the server has already said (bounded), so the probe's answer stands out."""
    for _ in range(1000):
        got = _read_some(sock, 0.02)
        if not got:
            return


def _send_all_draining(sock: socket.socket, data: bytes) -> tuple[bool, bytes]:
    """Send ``data`` while reading replies (no deadlock).

    Returns (the server closed, the last 64 KiB it sent meanwhile).
    """
    view = memoryview(data)
    received = b""
    deadline = time.monotonic() + ANSWER_TIMEOUT
    sock.setblocking(False)
    try:
        while view:
            if time.monotonic() > deadline:
                # The server stopped reading (paused or discarding slowly): fine for a
                # hostile client; stop sending.
                return False, received
            try:
                sent = sock.send(view[:65536])
                view = view[sent:]
            except BlockingIOError:
                time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                return True, received
            try:
                got = sock.recv(65536)
                if got == b"":
                    return True, received
                received = (received + got)[-65536:]
            except BlockingIOError:
                pass
            except ConnectionResetError:
                return True, received
        return False, received
    finally:
        sock.setblocking(True)
