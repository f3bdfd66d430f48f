#!/usr/bin/env python3
"""SMTP ingest benchmark: mailhost vs aiosmtpd (fsync) vs stock Twisted mail (no fsync).

Starts the three servers as subprocesses on loopback, drives each with Postfix's
``smtp-source`` (Debian package ``postfix``), checks that every message landed in the
Maildir, and reports msg/s and server CPU time per message (utime+stime from
/proc/<pid>/stat), median of interleaved runs, with ratios against each peer.

Usage: python3 bench/smtp_ingest.py [--runs 3] [--scale 1.0] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.environ.get("MAILHOST_BENCH_PEERS", "/work/shared/bench-peers")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# (label, parallel sessions, message length, message count at scale 1)
LOADS = [
    ("20 sessions x 4 KiB", 20, 4096, 3000),
    ("1 session x 4 KiB", 1, 4096, 1000),
    ("20 sessions x 100 KiB", 20, 102400, 800),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def count_files(root: str) -> int:
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        if os.path.basename(dirpath) in ("new", "cur"):
            n += len(files)
    return n


@dataclass
class Server:
    name: str
    workdir: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def maildir_root(self) -> str:
        return os.path.join(self.workdir, "mail")

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        cmd, env = self.command()
        log = open(os.path.join(self.workdir, "server.log"), "ab")
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env={**os.environ, **env},
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited; see {self.workdir}/server.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(512).startswith(b"220"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{self.name} did not answer on port {self.port}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Mailhost(Server):
    fsync = True

    def command(self):
        from mailhost.auth.hashing import hash_password
        from mailhost.auth.passwd import PasswdEntry, PasswdFile

        data = os.path.join(self.workdir, "data")
        os.makedirs(data, exist_ok=True)
        PasswdFile(os.path.join(data, "passwd")).save(
            {"bench@example.test": PasswdEntry("bench@example.test", hash_password("bench"))})
        config = os.path.join(self.workdir, "mailhost.toml")
        with open(config, "w") as f:
            f.write(f"""[server]
hostname = "mailhost.bench"
domains = ["example.test"]
data_dir = "{data}"
[auth]
create_postmaster = false
[store]
backend = "maildir"
path = "{self.maildir_root}"
fsync = {"true" if self.fsync else "false"}
[smtp]
listen = ["tcp:{self.port}:interface=127.0.0.1:backlog=256"]
max_connections = 500
max_connections_per_ip = 500
[submission]
listen = []
[pop3]
listen = []
[imap]
listen = []
""")
        return [sys.executable, TWISTD, "-n", "--pidfile=", "mailhost", "--config", config], {
            "PYTHONPATH": ROOT}


class MailhostNoFsync(Mailhost):
    """Same server, fsync off: isolates protocol cost from disk latency."""

    fsync = False


class Aiosmtpd(Server):
    def command(self):
        return [sys.executable, os.path.join(PEERS, "aiosmtpd_maildir.py"), "--port",
                str(self.port), "--maildir", self.maildir_root], {}


class StockTwisted(Server):
    def command(self):
        return [sys.executable, TWISTD, "-n", "--pidfile=", "--logfile=twistd.log", "-y",
                os.path.join(PEERS, "twisted_mail.tac")], {
            "TWMAIL_PORT": str(self.port), "TWMAIL_DIR": self.maildir_root}


def drive(server: Server, sessions: int, length: int, count: int) -> tuple[float, float]:
    """One load run: (msg/s, server CPU ms per message); exits if mail went missing."""
    before_files = count_files(server.maildir_root)
    cpu0 = cpu_seconds(server.proc.pid)
    t0 = time.monotonic()
    subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(count), "-l", str(length),
                    "-f", "a@example.test", "-t", "bench@example.test",
                    f"127.0.0.1:{server.port}"], check=True, timeout=600)
    elapsed = time.monotonic() - t0
    # Delivery is acknowledged before 250, but allow stragglers a moment to show.
    deadline = time.monotonic() + 10
    while count_files(server.maildir_root) - before_files < count and time.monotonic() < deadline:
        time.sleep(0.1)
    cpu = cpu_seconds(server.proc.pid) - cpu0
    delivered = count_files(server.maildir_root) - before_files
    if delivered != count:
        raise SystemExit(f"{server.name}: {delivered} of {count} messages delivered")
    return count / elapsed, cpu / count * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-fsync-row", action="store_true",
                    help="also run mailhost with fsync off (protocol cost without disk latency)")
    args = ap.parse_args()
    if shutil.which("smtp-source") is None:
        raise SystemExit("smtp-source not found: apt-get install -y postfix")
    workdir = args.workdir or tempfile.mkdtemp(prefix="smtp-ingest-")
    servers = [Mailhost("mailhost", os.path.join(workdir, "mailhost")),
               Aiosmtpd("aiosmtpd", os.path.join(workdir, "aiosmtpd")),
               StockTwisted("twisted", os.path.join(workdir, "twisted"))]
    if args.no_fsync_row:
        servers.append(MailhostNoFsync("mailhost-nofsync", os.path.join(workdir, "nofsync")))
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for s in servers:
            s.start()
        for s in servers:  # warm-up
            drive(s, 2, 4096, 20)
        for run in range(args.runs):
            for label, sessions, length, count in LOADS:
                n = max(10, int(count * args.scale))
                k = run % len(servers)
                order = servers[k:] + servers[:k]  # interleave, rotate the order
                for s in order:
                    rate, cpu = drive(s, sessions, length, n)
                    results.setdefault((label, s.name), []).append((rate, cpu))
                    print(f"run {run + 1} {label:24} {s.name:9} {rate:8.0f} msg/s "
                          f"{cpu:6.2f} ms CPU/msg", file=sys.stderr)
    finally:
        for s in servers:
            s.stop()

    def med(label: str, name: str, i: int) -> float:
        return statistics.median(r[i] for r in results[(label, name)])

    print(f"\nmedian of {args.runs} interleaved runs (msg/s; server CPU ms/msg)\n")
    print("| load | mailhost (fsync) | aiosmtpd (fsync) | stock Twisted (no fsync) "
          "| vs aiosmtpd | vs Twisted |")
    print("|---|---|---|---|---|---|")
    for label, *_ in LOADS:
        m, a, t = (med(label, n, 0) for n in ("mailhost", "aiosmtpd", "twisted"))
        mc, ac, tc = (med(label, n, 1) for n in ("mailhost", "aiosmtpd", "twisted"))
        print(f"| {label} | {m:.0f}; {mc:.2f} ms | {a:.0f}; {ac:.2f} ms | {t:.0f}; {tc:.2f} ms "
              f"| {m / a:.2f}x | {m / t:.2f}x |")
    if args.no_fsync_row:
        print("\nmailhost with fsync off (protocol cost only), vs stock Twisted (also no fsync):\n")
        for label, *_ in LOADS:
            n, t = med(label, "mailhost-nofsync", 0), med(label, "twisted", 0)
            nc = med(label, "mailhost-nofsync", 1)
            print(f"| {label} | {n:.0f} msg/s; {nc:.2f} ms CPU | {n / t:.2f}x |")
    print(f"\nworkdir: {workdir}")


if __name__ == "__main__":
    main()
