"""A 100 MB message through a real ``twistd mailhost``: DATA streams in constant memory."""

from __future__ import annotations

import os
import socket

from tests.mailhost_process import rss_kib

LINE = b"x" * 996 + b"\r\n"  # 998 octets, the RFC 5322 maximum
TOTAL = 100 * 1024 * 1024


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.buf = b""

    def reply(self) -> bytes:
        while True:
            if b"\r\n" in self.buf:
                line, self.buf = self.buf.split(b"\r\n", 1)
                if line[3:4] != b"-":
                    return line
                continue
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk

    def cmd(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()


def send(port: int, size: int) -> tuple[bytes, int]:
    c = Client(port)
    assert c.reply().startswith(b"220")
    assert c.cmd(b"EHLO big.test").startswith(b"250")
    assert c.cmd(b"MAIL FROM:<big@far.test> SIZE=%d" % size).startswith(b"250")
    assert c.cmd(b"RCPT TO:<alice@example.test>").startswith(b"250")
    assert c.cmd(b"DATA").startswith(b"354")
    header = b"Subject: large\r\n\r\n"
    c.sock.sendall(header)
    sent = len(header)
    block = LINE * 64  # ~64 KB per send
    while sent < size:
        c.sock.sendall(block)
        sent += len(block)
    c.sock.sendall(b".\r\n")
    final = c.reply()
    c.cmd(b"QUIT")
    c.sock.close()
    return final, sent


def test_100mb_message_server_rss_growth_under_20mb(mailhost_factory):
    proc = mailhost_factory(extra={"smtp": {"max_message_size": 200 * 1024 * 1024}}).start()
    port = proc.ports["smtp"]
    final, _ = send(port, 64 * 1024)  # warm up every code path once
    assert final.startswith(b"250")
    baseline = rss_kib(proc.pid)
    final, sent = send(port, TOTAL)
    peak = rss_kib(proc.pid, "VmHWM")
    assert final.startswith(b"250 2.0.0"), final
    growth_mib = (peak - baseline) / 1024
    print(f"baseline {baseline} KiB, peak {peak} KiB, growth {growth_mib:.1f} MiB")
    assert growth_mib < 20, f"server RSS grew by {growth_mib:.1f} MiB"
    new = os.path.join(proc.maildir("alice@example.test"), "new")
    sizes = sorted(os.path.getsize(os.path.join(new, f)) for f in os.listdir(new))
    assert len(sizes) == 2 and sizes[-1] > sent
