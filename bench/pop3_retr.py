#!/usr/bin/env python3
"""POP3 RETR benchmark: mailhost (``twistd -n mailhost``) vs Dovecot's POP3, same run.

Builds one Maildir with two users, ``small@`` (1,000 messages of 50 KiB) and ``big@``
(one 100 MiB message), with lines that begin with '.' so dot-stuffing is exercised.
mailhost serves it; Dovecot (``dovecot -F -c <throwaway conf>``, passwd-file
userdb, ``mail_location=maildir:``) serves a copy of the same files. The same
raw-socket client retrieves everything from each (RETR, one at a time, as fetchmail
does) and checks the octet count of every response. Reported: MB/s (median of
interleaved runs), the ratio mailhost/Dovecot, and server memory: mailhost's RSS
growth during the run and peak RSS (VmHWM), Dovecot's per-session ``pop3`` process
peak RSS. Both servers are stopped by PID afterwards.

Every load runs twice: plaintext (port 110 style) and over implicit TLS (POP3S, RFC
8314: mailhost's ``pop3.listen_tls``, Dovecot's ``inet_listener pop3s``), both with
one self-signed RSA-2048 certificate made with ``openssl req`` in the workdir, the
client's default TLS 1.3 context (no verification: loopback, the bench's own key).

Measured (2026-12-05, 2 shared cores at load 8-14, ``--runs 3``; MiB/s and server CPU
ms per MiB, mailhost vs Dovecot): 1000 x 50 KiB 60 vs 64 (0.95x), 4.17 vs 3.96;
1 x 100 MiB 138 vs 118, 1.60 vs 2.50; TLS 1000 x 50 KiB 28 vs 26, 7.72 vs 13.77;
TLS 1 x 100 MiB 94 vs 36, 3.10 vs 8.50. Single runs swing by 2x on this machine.

Needs Debian's ``dovecot-pop3d`` (the package's own service must not be running).
Usage: python3 bench/pop3_retr.py [--runs 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from body_peers import (  # noqa: E402
    BLOCK,
    LINES,
    USERS,
    DovecotPeer,
    MiB,
    children,
    connect,
    mailhost_with_corpus,
    make_certificate,
    tree_cpu,
)

from tests.mailhost_process import rss_kib  # noqa: E402

#: (user, over POP3S, label): the plaintext rows, then the same over implicit TLS
LOADS = [("small@example.test", False, "1000 x 50 KiB, 1 session"),
         ("big@example.test", False, "1 x 100 MiB"),
         ("small@example.test", True, "TLS 1000 x 50 KiB"),
         ("big@example.test", True, "TLS 1 x 100 MiB")]


class Client:
    """Just enough POP3 to log in and RETR fast; checks each response's framing."""

    def __init__(self, port: int, tls: bool = False) -> None:
        self.sock = connect(port, tls)  # tls: POP3S
        self.buf = b""
        assert self.line().startswith(b"+OK")

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, text: bytes) -> bytes:
        self.sock.sendall(text + b"\r\n")
        reply = self.line()
        assert reply.startswith(b"+OK"), reply
        return reply

    def login(self, user: str, password: str) -> None:
        self.cmd(b"USER " + user.encode())
        self.cmd(b"PASS " + password.encode())

    def listing(self) -> list[int]:
        self.cmd(b"LIST")
        sizes = []
        while (line := self.line()) != b".":
            sizes.append(int(line.split()[1]))
        return sizes

    def retr(self, n: int) -> int:
        """Octets on the wire for message n, terminator included."""
        self.sock.sendall(b"RETR %d\r\n" % n)
        self.line()
        total, tail, data = 0, b"", self.buf
        self.buf = b""
        while True:
            total += len(data)
            tail = (tail + data)[-5:]
            if tail == b"\r\n.\r\n":
                return total
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError

    def quit(self) -> None:
        self.sock.sendall(b"QUIT\r\n")
        self.sock.close()


def expected_wire(sizes: list[int]) -> int:
    """Wire octets: every '.' line doubled, plus '.\\r\\n' per message."""
    dots = sum(1 for line in LINES if line.startswith(b"."))
    return sum(size + (size // len(BLOCK)) * dots + 3 for size in sizes)


def retrieve_all(port: int, user: str, tls: bool = False) -> tuple[int, float]:
    """(message octets, seconds) for RETR of every message in one session."""
    c = Client(port, tls)
    c.login(user, USERS[user])
    sizes = c.listing()
    started = time.perf_counter()
    wire = sum(c.retr(n) for n in range(1, len(sizes) + 1))
    elapsed = time.perf_counter() - started
    c.quit()
    # every RETR is checked against LIST: size + stuffing + terminator, nothing else
    assert wire == expected_wire(sizes), (wire, expected_wire(sizes))
    return sum(sizes), elapsed


class PeakRss(threading.Thread):
    """Samples the RSS of the processes ``pids()`` returns; keeps the peak (KiB)."""

    def __init__(self, pids) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak, self.done = pids, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for pid in self.pids():
                try:
                    self.peak = max(self.peak, rss_kib(pid))
                except (LookupError, OSError):
                    pass
            time.sleep(0.005)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir")
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="pop3bench")
    os.makedirs(work, exist_ok=True)
    os.chmod(work, 0o755)  # Dovecot's auth process (user dovecot) reads dovecot.passwd here

    cert, key = make_certificate(work)
    mh, mh_tls_port = mailhost_with_corpus(work, "pop3", cert, key)
    dovecot = DovecotPeer(work, "pop3", cert, key)
    dovecot.copy_from(mh)

    mh.start()
    try:
        dovecot.start()
    except Exception:
        mh.stop()
        raise
    servers = {"mailhost": mh.ports["pop3"], "dovecot": dovecot.port}
    tls_ports = {"mailhost": mh_tls_port, "dovecot": dovecot.tls_port}
    results: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    pids = {"mailhost": mh.pid, "dovecot": dovecot.pid}
    mh_base = rss_kib(mh.pid)
    mh_peak = PeakRss(lambda: [mh.pid])
    dc_peak = PeakRss(lambda: children(dovecot.pid, "pop3"))
    try:
        for port in servers.values():  # warm-up: index build, page cache
            for user in USERS:
                retrieve_all(port, user)
        mh_base = rss_kib(mh.pid)
        mh_peak.start()
        dc_peak.start()
        for _run in range(args.runs):
            for load in LOADS:
                user, tls = load[0], load[1]
                for name, port in servers.items():
                    before = tree_cpu(pids[name])
                    octets, seconds = retrieve_all(tls_ports[name] if tls else port, user, tls)
                    time.sleep(0.3)  # let Dovecot reap the session process
                    used = tree_cpu(pids[name]) - before
                    results.setdefault((load, name), []).append(octets / MiB / seconds)
                    cpu.setdefault((load, name), []).append(used * 1000 / (octets / MiB))
    finally:
        mh_peak.done.set()
        dc_peak.done.set()
        hwm = rss_kib(mh.pid, "VmHWM")
        mh.stop()
        dovecot.stop()

    print(f"\nPOP3 RETR throughput, median of {args.runs} interleaved runs (MiB/s)")
    print(f"{'load':<28}{'mailhost':>10}{'dovecot':>10}{'ratio':>8}")
    for load in LOADS:
        label = load[2]
        ours = statistics.median(results[(load, "mailhost")])
        theirs = statistics.median(results[(load, "dovecot")])
        print(f"{label:<28}{ours:>10.1f}{theirs:>10.1f}{ours / theirs:>8.2f}")
        print(f"{'  (all runs)':<28}" + "  ".join(
            f"{a:.0f}/{b:.0f}" for a, b in zip(results[(load, "mailhost")],
                                                 results[(load, "dovecot")], strict=True)))
    print("\nServer CPU per MiB sent (ms), median; ratio dovecot/mailhost (>= 0.5 is the target)")
    for load in LOADS:
        label = load[2]
        ours = statistics.median(cpu[(load, "mailhost")])
        theirs = statistics.median(cpu[(load, "dovecot")])
        print(f"{label:<28}{ours:>10.2f}{theirs:>10.2f}{theirs / ours:>8.2f}")
    print(f"\nmailhost RSS: {mh_base / 1024:.1f} MiB before the timed runs, peak during them "
          f"{mh_peak.peak / 1024:.1f} MiB (growth {(mh_peak.peak - mh_base) / 1024:.1f} MiB); "
          f"process VmHWM {hwm / 1024:.1f} MiB")
    print(f"dovecot pop3 session process peak RSS: {dc_peak.peak / 1024:.1f} MiB")
    print(f"workdir: {work}")


if __name__ == "__main__":
    main()
