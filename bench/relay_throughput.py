#!/usr/bin/env python3
"""Outbound relay benchmark: A -> B throughput, inbound ingest for comparison, and the
queue's memory with 100k queued messages.

Starts a twisted.names DNS server (subprocess), mail host B (127.0.0.2, domain b.test)
and relay A (127.0.0.1, domain a.test, relaying for 127.0.0.1 without AUTH), all as
``twistd -n mailhost`` processes. Postfix's ``smtp-source`` drives 20 sessions of
4 KiB messages:

- ingest: straight into B's port 25 (the inbound rate);
- relay: into A, which queues and relays through MX lookup to B; the clock stops
  when the last message is in B's Maildir (end-to-end relay rate);
- decomposed: into A while B is down (queueing alone), then B up and
  ``mailhost queue flush`` (draining alone, including the CLI's start-up).

Then A is stopped, 100k messages are written into its spool in the one-file form a
running server writes (due in a day, so they stay queued), A is restarted, and its
peak and settled RSS are reported next to the RSS of an idle A with an empty queue.

A queues while B is down only until its first try fails: the scheduler then holds
off new sessions to b.test (see ``Scheduler._hold_off``) until the flush.

The relay run also reports the CPU per message of A and B (from /proc), which varies
less than msg/s on a shared VM. ``--churn N`` first creates and deletes N files on
the work directory's file system: on ext4 without a journal, inode allocation then
skips every recently freed inode for up to 305 s, which is what a test suite or an
``rm -rf`` just before the run does to every create (see ``outbound/spool.py``).

Usage: python3 bench/relay_throughput.py [--count 3000] [--queued 100000] [--no-fsync]
       [--churn 30000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

DNS_SERVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from twisted.internet import reactor
    from tests.outbound.dnsserver import a, mx, start_dns
    port, _ = start_dns({"b.test": [mx(10, "mx.b.test", 3600)],
                         "mx.b.test": [a("127.0.0.2", 3600)]})
    open(sys.argv[1], "w").write(str(port))
    reactor.run()
""")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def count_files(root: str) -> int:
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        if os.path.basename(dirpath) in ("new", "cur"):
            n += len(files)
    return n


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def churn(directory: str, n: int) -> None:
    """Create and delete ``n`` small files (see the module docstring)."""
    path = os.path.join(directory, "churn")
    os.makedirs(path)
    for i in range(n):
        with open(os.path.join(path, str(i)), "wb") as f:
            f.write(b"x" * 100)
    shutil.rmtree(path)


def status_kib(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


class Host:
    def __init__(self, name: str, workdir: str, ip: str, domain: str, port: int,
                 extra: str) -> None:
        self.name, self.ip, self.domain, self.port = name, ip, domain, port
        self.workdir = os.path.join(workdir, name)
        self.data = os.path.join(self.workdir, "data")
        self.config = os.path.join(self.workdir, "mailhost.toml")
        self.log = os.path.join(self.workdir, "twistd.log")
        self.proc: subprocess.Popen | None = None
        os.makedirs(self.data, exist_ok=True)
        with open(self.config, "w") as f:
            f.write(textwrap.dedent(f"""
                [server]
                hostname = "mail.{domain}"
                domains = ["{domain}"]
                data_dir = "{self.data}"
                [auth]
                create_postmaster = false
                [smtp]
                listen = ["tcp:{port}:interface={ip}:backlog=256"]
                max_connections = 500
                max_connections_per_ip = 500
                [submission]
                listen = []
                [pop3]
                listen = []
                [imap]
                listen = []
            """) + extra)

    def add_user(self, user: str) -> None:
        from mailhost.auth.hashing import hash_password
        from mailhost.auth.passwd import PasswdEntry, PasswdFile

        PasswdFile(os.path.join(self.data, "passwd")).save(
            {user: PasswdEntry(user, hash_password("bench"))})

    @property
    def maildir(self) -> str:
        return os.path.join(self.data, "mail")

    profile = ""

    def start(self, wait_log: str | None = None, timeout: float = 600) -> None:
        log = open(self.log, "ab")
        prof = ([f"--profile={self.profile}", "--profiler=cprofile", "--savestats"]
                if self.profile else [])
        self.proc = subprocess.Popen(
            [sys.executable, TWISTD, "-n", "--pidfile=", *prof, "mailhost",
             "--config", self.config],
            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": ROOT})
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited; see {self.log}")
            ready = True
            try:
                with socket.create_connection((self.ip, self.port), timeout=1) as s:
                    ready = s.recv(512).startswith(b"220")
            except OSError:
                ready = False
            if ready and wait_log:
                with open(self.log, errors="replace") as f:
                    ready = wait_log in f.read()
            if ready:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{self.name} did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def smtp_source(ip: str, port: int, count: int, sessions: int = 20, length: int = 4096) -> float:
    t0 = time.monotonic()
    subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(count), "-l", str(length),
                    "-f", "bench@a.test", "-t", "bob@b.test", f"{ip}:{port}"],
                   check=True, timeout=900)
    return time.monotonic() - t0


def wait_count(root: str, target: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while count_files(root) < target:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {count_files(root)} of {target} arrived in {root}")
        time.sleep(0.05)
    return time.monotonic()


def fill_spool(queue_dir: str, n: int, length: int) -> float:
    from mailhost.outbound.envelope import Envelope, RecipientState, new_queue_id
    from mailhost.outbound.spool import SpoolFiles

    files = SpoolFiles(queue_dir, fsync=False)
    files.ensure_sync()
    body = (b"From: bench@a.test\r\nTo: bob@b.test\r\nSubject: queued\r\n\r\n"
            + b"x" * 76 + b"\r\n") * max(1, length // 80)
    later = time.time() + 86400
    t0 = time.monotonic()
    for _ in range(n):
        qid = new_queue_id()
        env = Envelope(id=qid, sender="bench@a.test", arrival=time.time(), size=len(body),
                       recipients=[RecipientState("bob@b.test", attempts=1, next_attempt=later)])
        # The form a running server writes (one file, the envelope embedded).
        files.commit_sync(os.path.join(files.tmp_dir, qid), env, body)
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=3000, help="messages per throughput run")
    ap.add_argument("--queued", type=int, default=100_000, help="messages for the RSS test")
    ap.add_argument("--no-fsync", action="store_true", help="fsync off in store and spool")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--churn", type=int, default=0, metavar="N",
                    help="create and delete N files before the throughput runs")
    ap.add_argument("--profile-relay", metavar="FILE", help="cProfile stats of A (twistd)")
    args = ap.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="relay-bench-")
    os.makedirs(workdir, exist_ok=True)
    fsync = "false" if args.no_fsync else "true"
    dns_port_file = os.path.join(workdir, "dns.port")
    dns = subprocess.Popen([sys.executable, "-c", DNS_SERVER, dns_port_file, ROOT])
    while not os.path.exists(dns_port_file) or not open(dns_port_file).read():
        time.sleep(0.1)
    dns_port = int(open(dns_port_file).read())
    b_port = free_port("127.0.0.2")
    b = Host("b", workdir, "127.0.0.2", "b.test", b_port,
             f"[store]\nfsync = {fsync}\n[outbound]\nfsync = {fsync}\n")
    a = Host("a", workdir, "127.0.0.1", "a.test", free_port(),
             f'[store]\nfsync = {fsync}\n'
             f'[outbound]\nfsync = {fsync}\nresolver = "127.0.0.1:{dns_port}"\n'
             f"port = {b_port}\nmax_concurrency = 20\nmax_per_domain = 10\n"
             f"scan_interval = 5.0\n")
    # relay_networks lives in [smtp]; append it there.
    text = open(a.config).read().replace(
        "max_connections_per_ip = 500\n",
        'max_connections_per_ip = 500\nrelay_networks = ["127.0.0.1/32"]\n', 1)
    open(a.config, "w").write(text)
    a.profile = args.profile_relay or ""
    b.add_user("bob@b.test")
    a.add_user("bench@a.test")
    n = args.count
    try:
        b.start()
        a.start(wait_log="outbound queue started")
        smtp_source("127.0.0.2", b_port, 50)  # warm-up both paths
        smtp_source("127.0.0.1", a.port, 50)
        wait_count(b.maildir, 100)
        idle_rss = status_kib(a.proc.pid, "VmRSS")
        if args.churn:
            churn(workdir, args.churn)

        base = count_files(b.maildir)
        ingest_s = smtp_source("127.0.0.2", b_port, n)
        wait_count(b.maildir, base + n)
        ingest = n / ingest_s

        base = count_files(b.maildir)
        cpu_a, cpu_b = cpu_seconds(a.proc.pid), cpu_seconds(b.proc.pid)
        t0 = time.monotonic()
        accept_s = smtp_source("127.0.0.1", a.port, n)
        done = wait_count(b.maildir, base + n)
        cpu_a = (cpu_seconds(a.proc.pid) - cpu_a) / n * 1000
        cpu_b = (cpu_seconds(b.proc.pid) - cpu_b) / n * 1000
        relay = n / (done - t0)
        accept = n / accept_s
        a_hwm_relay = status_kib(a.proc.pid, "VmHWM")

        # Decomposed: queue only (B down, so A relays nothing), then drain on flush.
        b.stop()
        queue_s = smtp_source("127.0.0.1", a.port, n)
        queue_only = n / queue_s
        time.sleep(2)  # the first attempts fail (connection refused) and back off
        b.start()
        base = count_files(b.maildir)
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "mailhost.cli.main", "--config", a.config,
                        "queue", "flush"], check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": ROOT})
        drain = n / (wait_count(b.maildir, base + n) - t0)

        a.stop()
        a.profile = ""  # keep the relay run's profile
        fill_s = fill_spool(os.path.join(a.data, "queue"), args.queued, 4096)
        t0 = time.monotonic()
        a.start(wait_log=f"outbound queue started with {args.queued} messages")
        load_s = time.monotonic() - t0
        time.sleep(2)
        hwm = status_kib(a.proc.pid, "VmHWM")
        rss = status_kib(a.proc.pid, "VmRSS")
    finally:
        a.stop()
        b.stop()
        dns.send_signal(signal.SIGTERM)
        dns.wait(10)

    print(f"\nrelay benchmark ({'no fsync' if args.no_fsync else 'fsync on'}; "
          f"20 sessions x 4 KiB, {n} messages; {os.cpu_count()} CPUs"
          f"{f'; after churning {args.churn} files' if args.churn else ''})\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| inbound ingest into B (smtp-source -> B) | {ingest:.0f} msg/s |")
    print(f"| relay A -> B end to end (submit to last in B's Maildir) | {relay:.0f} msg/s |")
    print(f"| A accepting for relay (smtp-source -> A's queue) | {accept:.0f} msg/s |")
    print(f"| relay / ingest | {relay / ingest:.2f} |")
    print(f"| CPU per relayed message: A / B | {cpu_a:.2f} ms / {cpu_b:.2f} ms |")
    print(f"| A queueing only (B down, nothing relayed) | {queue_only:.0f} msg/s |")
    print(f"| A draining its queue to B after `mailhost queue flush` | {drain:.0f} msg/s |")
    print(f"| A RSS idle / peak during relay | {idle_rss / 1024:.0f} MiB / "
          f"{a_hwm_relay / 1024:.0f} MiB |")
    print(f"| A with {args.queued} queued: peak RSS / RSS after load | {hwm / 1024:.0f} MiB / "
          f"{rss / 1024:.0f} MiB (load {load_s:.1f} s; spool written in {fill_s:.1f} s) |")
    print(f"\nworkdir: {workdir}")


if __name__ == "__main__":
    main()
