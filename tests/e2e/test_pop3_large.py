"""A 100 MB RETR from ``twistd -n mailhost`` streams: server RSS grows by less than 20 MB."""

from __future__ import annotations

import hashlib
import os
import smtplib
import socket
import threading
import time

import pytest

from tests.mailhost_process import rss_kib

MiB = 1024 * 1024
# 1 KiB of lines, some beginning with '.', so stuffing is exercised all the way through.
LINES = [b".dot line %04d " % i + b"x" * 47 + b"\r\n" if i % 3 == 0 else
         b"plain line %04d " % i + b"y" * 45 + b"\r\n" for i in range(16)]
BLOCK = b"".join(LINES)
STUFFED_BLOCK = b"".join(b"." + line if line.startswith(b".") else line for line in LINES)
HEADER = b"From: big@example.test\r\nSubject: 100 MB\r\n\r\n"


def drop_into_maildir(root: str, copies: int) -> int:
    """Write the message into new/ as an external MDA would; returns its size."""
    name = f"{int(time.time())}.M1P{os.getpid()}Q1.bigtest"
    tmp = os.path.join(root, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(HEADER)
        for _ in range(copies):
            f.write(BLOCK)
    os.rename(tmp, os.path.join(root, "new", name))
    return len(HEADER) + copies * len(BLOCK)


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.01)


def read_line(sock: socket.socket, buf: bytearray) -> bytes:
    while b"\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\r\n")
    buf[:] = rest
    return line


@pytest.mark.slow
def test_retr_100mb_in_constant_memory(mailhost_proc):
    # One small SMTP delivery creates alice's Maildir; the big one is dropped beside it.
    with smtplib.SMTP("127.0.0.1", mailhost_proc.ports["smtp"], timeout=30) as smtp:
        smtp.sendmail("s@remote.test", ["alice@example.test"], b"Subject: small\r\n\r\nhi\r\n")
    copies = 100 * MiB // len(BLOCK)
    size = drop_into_maildir(mailhost_proc.maildir("alice@example.test"), copies)
    expected = hashlib.sha256(HEADER)
    for _ in range(copies):
        expected.update(STUFFED_BLOCK)

    sock = socket.create_connection(("127.0.0.1", mailhost_proc.ports["pop3"]), timeout=60)
    buf = bytearray()
    read_line(sock, buf)
    sock.sendall(b"USER alice@example.test\r\nPASS alice-pw\r\nLIST\r\n")
    assert read_line(sock, buf).startswith(b"+OK")
    assert read_line(sock, buf).startswith(b"+OK")
    assert read_line(sock, buf).startswith(b"+OK")
    listing = [read_line(sock, buf), read_line(sock, buf), read_line(sock, buf)]
    assert listing[2] == b"."
    # Both files get their UIDs when the folder is first opened, in Dovecot's order
    # (seconds, then the M<usec> of the name), so the big one may come first.
    [number] = [n for n, octets in (line.split() for line in listing[:2]) if octets == b"%d" % size]

    baseline = rss_kib(mailhost_proc.pid)
    sampler = RssSampler(mailhost_proc.pid)
    sampler.start()
    started = time.monotonic()
    sock.sendall(b"RETR %s\r\n" % number)
    assert read_line(sock, buf) == b"+OK %d octets" % size
    # Hash everything but the last 3 octets seen, which must end up being the ".\r\n".
    digest, held, last5, data = hashlib.sha256(), b"", b"", bytes(buf)
    while True:
        window = held + data
        digest.update(window[:-3])
        held, last5 = window[-3:], (last5 + data)[-5:]
        if last5 == b"\r\n.\r\n":
            break
        data = sock.recv(1 << 20)
        assert data, "connection closed mid-RETR"
    elapsed = time.monotonic() - started
    sampler.stop.set()
    sampler.join()
    sock.sendall(b"QUIT\r\n")
    sock.close()

    assert digest.hexdigest() == expected.hexdigest()
    growth_mib = (sampler.peak - baseline) / 1024
    print(f"RETR {size / MiB:.0f} MiB in {elapsed:.2f}s ({size / MiB / elapsed:.0f} MiB/s), "
          f"server RSS {baseline / 1024:.1f} MiB -> peak {sampler.peak / 1024:.1f} MiB")
    assert growth_mib < 20, f"server RSS grew by {growth_mib:.1f} MiB"
