#!/usr/bin/env python3
"""IMAP body benchmark: ``FETCH BODY.PEEK[]`` from mailhost (``twistd -n mailhost``) vs
Dovecot's IMAP, same run, plaintext and over implicit TLS (IMAPS).

The IMAP sibling of ``bench/pop3_retr.py`` (issue 18: "POP3 and IMAP bodies: cut the CPU
per MiB sent"), built the same way and from the same pieces (``bench/body_peers.py``):
one Maildir with ``small@`` (1,000 messages of 50 KiB) and ``big@`` (one 100 MiB
message), served by mailhost and, from a copy of the same files, by Dovecot (``dovecot
-F -c <throwaway conf>``, passwd-file userdb, ``mail_location=maildir:``). One
raw-socket client logs in, SELECTs INBOX and sends ``UID FETCH 1:* BODY.PEEK[]``
(small@, every body in one command, as a client syncing a folder does) or ``FETCH 1
BODY.PEEK[]`` (big@); it counts the literal octets and checks them against the message
sizes. Each load runs plaintext and over IMAPS (RFC 8314: mailhost's
``imap.listen_tls``, Dovecot's ``inet_listener imaps``) with one self-signed RSA-2048
certificate and the client's default TLS 1.3 context.

Reported: MiB/s and server CPU (ms) per MiB sent, medians of interleaved runs, and the
ratios mailhost/Dovecot (targets, as for POP3: >= 0.8x MiB/s, CPU <= 1.5x). Server CPU
is the whole process tree's (mailhost's one process; Dovecot's master, its login
processes, which proxy TLS, and the per-session ``imap`` process), read just before
and after the FETCH (login and SELECT not counted). A last load fetches ``BODY[]``
without PEEK, so every message gets ``\\Seen`` (a rename in both servers' Maildir); its
flags are cleared before, untimed.
Both servers are stopped by PID afterwards.

Measured (2026-12-05, 2 shared cores at load 17-19, ``--runs 3``; MiB/s and server CPU
ms per MiB, mailhost vs Dovecot): 1000 x 50 KiB 162 vs 90, 2.50 vs 1.88 (1.33x; 5.84 vs
2.09, 2.8x, before the FETCH path was cut); 1 x 100 MiB 263 vs 181, 1.20 vs 1.20; TLS
1000 x 50 KiB 58 vs 29, 5.01 vs 8.76; TLS 1 x 100 MiB 154 vs 27, 2.80 vs 8.30; BODY[]
setting \\Seen 70 vs 78, 3.96 vs 2.50 (1.58x: the 1,000 renames and their inotify
events). Single runs swing by 2x or more on this machine.

Needs Debian's ``dovecot-imapd`` (the package's own service must not be running).
Usage: python3 bench/imap_fetch.py [--runs 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from body_peers import (  # noqa: E402
    USERS,
    DovecotPeer,
    MiB,
    connect,
    mailhost_with_corpus,
    make_certificate,
    tree_cpu,
)

from tests.mailhost_process import rss_kib  # noqa: E402

#: (user, over IMAPS, FETCH command, label)
LOADS = [("small@example.test", False, b"UID FETCH 1:* BODY.PEEK[]", "1000 x 50 KiB, 1 FETCH"),
         ("big@example.test", False, b"FETCH 1 BODY.PEEK[]", "1 x 100 MiB"),
         ("small@example.test", True, b"UID FETCH 1:* BODY.PEEK[]", "TLS 1000 x 50 KiB"),
         ("big@example.test", True, b"FETCH 1 BODY.PEEK[]", "TLS 1 x 100 MiB"),
         # not PEEK: every message gets \Seen (a Maildir rename each); reset, untimed, first
         ("small@example.test", False, b"UID FETCH 1:* BODY[]", "1000 x 50 KiB BODY[] +Seen")]
#: Run before a load's FETCH, neither timed nor counted in its CPU.
RESET = {b"UID FETCH 1:* BODY[]": b"UID STORE 1:* -FLAGS.SILENT (\\Seen)"}
RECV = 1 << 20


class Client:
    """Just enough IMAP to log in, SELECT and FETCH bodies fast, counting literals."""

    def __init__(self, port: int, tls: bool = False) -> None:
        self.sock = connect(port, tls)  # tls: IMAPS
        self.buf = b""
        self.tags = 0
        assert self._line().startswith(b"* OK")

    def _recv(self) -> bytes:
        data = self.sock.recv(RECV)
        if not data:
            raise EOFError
        return data

    def _line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            self.buf += self._recv()
        line, self.buf = self.buf[:i], self.buf[i + 2:]
        return line

    def command(self, text: bytes) -> tuple[int, int]:
        """Send ``text``; read to its tagged OK. (literals, literal octets) seen."""
        self.tags += 1
        tag = b"b%d " % self.tags
        self.sock.sendall(tag + text + b"\r\n")
        literals = octets = 0
        while True:
            line = self._line()
            if line.startswith(tag):
                assert line[len(tag):].startswith(b"OK"), line
                return literals, octets
            if line.endswith(b"}") and b"FETCH" in line:
                n = int(line[line.rindex(b"{") + 1:-1])
                literals += 1
                octets += n
                if len(self.buf) >= n:
                    self.buf = self.buf[n:]
                    continue
                left = n - len(self.buf)
                self.buf = b""
                while left > 0:
                    data = self._recv()
                    if len(data) > left:
                        self.buf = data[left:]
                        break
                    left -= len(data)

    def logout(self) -> None:
        self.sock.sendall(b"z LOGOUT\r\n")
        self.sock.close()


def fetch_all(port: int, user: str, command: bytes, expected: list[int],
              tls: bool = False, cpu=None) -> tuple[int, float, float]:
    """(body octets, seconds, server CPU seconds) for one FETCH of the bodies in one
    session; ``cpu()`` is the server's CPU so far (read before and after the FETCH, so
    login, SELECT and a ``RESET`` are not counted; a Dovecot session process is alive
    then and counted)."""
    c = Client(port, tls)
    c.command(b'LOGIN "%s" "%s"' % (user.encode(), USERS[user].encode()))
    c.command(b"SELECT INBOX")
    if command in RESET:
        c.command(RESET[command])
    before = cpu() if cpu is not None else 0.0
    started = time.perf_counter()
    literals, octets = c.command(command)
    elapsed = time.perf_counter() - started
    used = cpu() - before if cpu is not None else 0.0
    c.logout()
    # every literal is a whole message, nothing else is a literal
    assert (literals, octets) == (len(expected), sum(expected)), (literals, octets)
    return octets, elapsed, used


def sizes_in(maildir: str) -> list[int]:
    cur = os.path.join(maildir, "cur")
    return [os.path.getsize(os.path.join(cur, name)) for name in os.listdir(cur)]


def print_rows(values: dict[tuple[tuple, str], list[float]], names: list[str],
               median_digits: int, run_digits: int) -> None:
    """Per load: the median of each server, their ratio (with two), then every run."""
    for load in LOADS:
        meds = [statistics.median(values[(load, n)]) for n in names]
        ratio = f"{meds[0] / meds[1]:>8.2f}" if len(names) == 2 else ""
        print(f"{load[3]:<28}" + "".join(f"{m:>10.{median_digits}f}" for m in meds) + ratio)
        print(f"{'  (all runs)':<28}" + "  ".join(
            "/".join(f"{r:.{run_digits}f}" for r in runs)
            for runs in zip(*(values[(load, n)] for n in names), strict=True)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir")
    ap.add_argument("--only", choices=["mailhost", "dovecot"],
                    help="serve from one server only (for profiling one side)")
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="imapbench")
    os.makedirs(work, exist_ok=True)
    os.chmod(work, 0o755)  # Dovecot's auth process (user dovecot) reads dovecot.passwd here

    cert, key = make_certificate(work)
    mh, mh_tls_port = mailhost_with_corpus(work, "imap", cert, key)
    expected = {user: sizes_in(mh.maildir(user)) for user in USERS}
    dovecot = DovecotPeer(work, "imap", cert, key)
    dovecot.copy_from(mh)

    mh.start()
    try:
        dovecot.start()
    except Exception:
        mh.stop()
        raise
    servers = {"mailhost": mh.ports["imap"], "dovecot": dovecot.port}
    if args.only:
        servers = {args.only: servers[args.only]}
    tls_ports = {"mailhost": mh_tls_port, "dovecot": dovecot.tls_port}
    pids = {"mailhost": mh.pid, "dovecot": dovecot.pid}
    results: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    load_avg = []
    try:
        for port in servers.values():  # warm-up: index build, page cache
            for user in USERS:
                fetch_all(port, user, LOADS[0][2] if user.startswith("small") else LOADS[1][2],
                          expected[user])
        mh_base = rss_kib(mh.pid)
        for _run in range(args.runs):
            load_avg.append(os.getloadavg()[0])
            for load in LOADS:
                user, tls, command = load[0], load[1], load[2]
                for name, port in servers.items():
                    pid = pids[name]
                    octets, seconds, used = fetch_all(
                        tls_ports[name] if tls else port, user, command, expected[user], tls,
                        cpu=lambda pid=pid: tree_cpu(pid))
                    time.sleep(0.3)  # let Dovecot reap the session process
                    results.setdefault((load, name), []).append(octets / MiB / seconds)
                    cpu.setdefault((load, name), []).append(used * 1000 / (octets / MiB))
        load_avg.append(os.getloadavg()[0])
    finally:
        hwm = rss_kib(mh.pid, "VmHWM")
        mh.stop()
        dovecot.stop()

    names = list(servers)
    print(f"\nIMAP FETCH BODY.PEEK[] throughput, median of {args.runs} interleaved runs (MiB/s)")
    print(f"{'load':<28}" + "".join(f"{n:>10}" for n in names)
          + (f"{'ratio':>8}" if len(names) == 2 else ""))
    print_rows(results, names, median_digits=1, run_digits=0)
    print("\nServer CPU per MiB sent (ms), median; ratio mailhost/dovecot (<= 1.5 is the target)")
    print_rows(cpu, names, median_digits=2, run_digits=2)
    print(f"\nmailhost RSS {mh_base / 1024:.1f} MiB after warm-up, VmHWM {hwm / 1024:.1f} MiB")
    print("load average (1 min) at each run's start and at the end: "
          + ", ".join(f"{a:.1f}" for a in load_avg))
    print(f"workdir: {work}")


if __name__ == "__main__":
    main()
