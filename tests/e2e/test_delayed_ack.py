"""A client that splits a request over two writes is not held up by our delayed ACK.

Issue 16: imaplib's APPEND sends the literal, then the final CRLF, in two writes. With
Nagle on (the default) the CRLF waits until the literal is acknowledged, and the
server's kernel delays that ACK by 40 ms (Linux's minimum) hoping to piggyback it on a
reply that cannot come before the CRLF: every APPEND took 45 ms (Dovecot: 1.4 ms).
The same holds for an SMTP body sent apart from its final dot and for any command line
sent in pieces.

These tests look at the mechanism, not at a timing of the whole command: after each
partial write the client asks its own kernel (``TCP_INFO``) when its bytes were
acknowledged. Without an immediate ACK that is never sooner than the 40 ms delayed-ACK
timer; with it, it is a fraction of a millisecond. The quickest of a few tries must be
under 30 ms, so a loaded machine only has to be quick once.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time

import pytest

from mailhost.tls import write_selfsigned
from tests.mailhost_process import MailHostProcess, free_port

#: Offset of ``tcpi_unacked`` (u32) in ``struct tcp_info`` (linux/tcp.h): 8 one-byte
#: fields, then rto, ato, snd_mss, rcv_mss.
TCPI_UNACKED = 24
TRIES = 5
#: Linux never fires a delayed ACK sooner than 40 ms (TCP_DELACK_MIN).
QUICK = 0.030


def unacked(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, TCPI_UNACKED)[0]


def send_and_time_ack(sock: socket.socket, data: bytes, limit: float = 2.0) -> float:
    """Send ``data`` in one write; seconds until the peer has acknowledged all of it."""
    assert unacked(sock) == 0
    sock.sendall(data)
    start = time.monotonic()
    while unacked(sock) and time.monotonic() - start < limit:
        time.sleep(0.0002)
    return time.monotonic() - start


class Lines:
    """A blocking line reader over a (possibly TLS) socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line + b"\n"

    def until(self, prefix: bytes) -> bytes:
        for _ in range(1000):
            line = self.line()
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no {prefix!r}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("delayed-ack")
    cert, key = str(work / "cert.pem"), str(work / "key.pem")
    write_selfsigned("localhost", cert, key)
    imaps = free_port()
    (work / "mh").mkdir()
    proc = MailHostProcess(str(work / "mh"), extra={
        "tls": {"cert": cert, "key": key},
        "imap": {"listen_tls": [f"tcp:{imaps}:interface=127.0.0.1"]},
    }).start()
    proc.extra["imaps"] = {"port": imaps, "cafile": cert}
    yield proc
    proc.kill()


def imap_session(sock: socket.socket) -> Lines:
    lines = Lines(sock)
    assert lines.line().startswith(b"* OK")
    sock.sendall(b"L LOGIN alice@example.test alice-pw\r\n")
    assert lines.until(b"L ").startswith(b"L OK")
    sock.sendall(b"S SELECT INBOX\r\n")
    assert lines.until(b"S ").startswith(b"S OK")
    return lines


def imap_split_append(sock: socket.socket, lines: Lines) -> list[float]:
    """imaplib's way: command line, wait for '+', the literal, then CRLF apart."""
    message = b"From: a@example.test\r\nSubject: split\r\n\r\n" + b"body\r\n" * 40
    waits = []
    for n in range(TRIES):
        sock.sendall(b"A%d APPEND INBOX {%d}\r\n" % (n, len(message)))
        assert lines.line().startswith(b"+")
        waits.append(send_and_time_ack(sock, message))
        sock.sendall(b"\r\n")
        assert lines.until(b"A%d " % n).startswith(b"A%d OK" % n)
    return waits


def test_imap_split_write_append_is_acknowledged_at_once(server):
    with socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=10) as sock:
        lines = imap_session(sock)
        waits = imap_split_append(sock, lines)
        # A command line sent in two pieces: the first piece is acknowledged at once too.
        for n in range(TRIES):
            waits.append(send_and_time_ack(sock, b"N%d NO" % n))
            sock.sendall(b"OP\r\n")
            assert lines.until(b"N%d " % n).startswith(b"N%d OK" % n)
    assert min(waits[:TRIES]) < QUICK, waits
    assert min(waits[TRIES:]) < QUICK, waits


def test_imap_over_implicit_tls_split_write_is_acknowledged_at_once(server):
    """Through the TLS wrapper: the socket is found under it."""
    info = server.extra["imaps"]
    ctx = ssl.create_default_context(cafile=info["cafile"])
    raw = socket.create_connection(("127.0.0.1", info["port"]), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        lines = imap_session(sock)
        waits = imap_split_append(sock, lines)
    assert min(waits) < QUICK, waits


def test_smtp_body_apart_from_final_dot_is_acknowledged_at_once(server):
    with socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=10) as sock:
        lines = Lines(sock)
        assert lines.line().startswith(b"220")
        sock.sendall(b"EHLO client.test\r\n")
        assert lines.until(b"250 ").startswith(b"250 ")
        waits = []
        for _ in range(TRIES):
            sock.sendall(b"MAIL FROM:<s@remote.test>\r\n")
            assert lines.line().startswith(b"250")
            sock.sendall(b"RCPT TO:<alice@example.test>\r\n")
            assert lines.line().startswith(b"250")
            sock.sendall(b"DATA\r\n")
            assert lines.line().startswith(b"354")
            waits.append(send_and_time_ack(
                sock, b"Subject: split\r\n\r\n" + b"body line\r\n" * 40))
            sock.sendall(b".\r\n")
            assert lines.line().startswith(b"250")
        sock.sendall(b"QUIT\r\n")
    assert min(waits) < QUICK, waits


def test_pop3_command_line_in_two_writes_is_acknowledged_at_once(server):
    with socket.create_connection(("127.0.0.1", server.ports["pop3"]), timeout=10) as sock:
        lines = Lines(sock)
        assert lines.line().startswith(b"+OK")
        sock.sendall(b"USER alice@example.test\r\n")
        assert lines.line().startswith(b"+OK")
        sock.sendall(b"PASS alice-pw\r\n")
        assert lines.line().startswith(b"+OK")
        waits = []
        for _ in range(TRIES):
            waits.append(send_and_time_ack(sock, b"NO"))
            sock.sendall(b"OP\r\n")
            assert lines.line().startswith(b"+OK")
        sock.sendall(b"QUIT\r\n")
    assert min(waits) < QUICK, waits
