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
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.mailhost_process import MailHostProcess, free_port, rss_kib  # noqa: E402

MiB = 1024 * 1024
#: (user, over POP3S, label): the plaintext rows, then the same over implicit TLS
LOADS = [("small@example.test", False, "1000 x 50 KiB, 1 session"),
         ("big@example.test", False, "1 x 100 MiB"),
         ("small@example.test", True, "TLS 1000 x 50 KiB"),
         ("big@example.test", True, "TLS 1 x 100 MiB")]
USERS = {"small@example.test": "small-pw", "big@example.test": "big-pw"}
LINES = [(b".stuffed %04d " % i if i % 4 == 0 else b"line %04d     " % i) + b"z" * 48 + b"\r\n"
         for i in range(16)]
BLOCK = b"".join(LINES)  # 1 KiB


def message(size: int, n: int) -> bytes:
    head = b"From: bench@example.test\r\nSubject: bench %d\r\nMessage-ID: <%d@bench>\r\n\r\n" % (
        n, n)
    return head + BLOCK * ((size - len(head)) // len(BLOCK))


def write_maildir(root: str, messages: list[bytes] | None = None, big: int = 0) -> None:
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    now = int(time.time())
    for n, data in enumerate(messages or []):
        with open(os.path.join(root, "cur", f"{now}.M{n}P1Q{n}.bench:2,"), "wb") as f:
            f.write(data)
    if big:
        with open(os.path.join(root, "cur", f"{now}.M0P2Q0.bench:2,"), "wb") as f:
            f.write(message(len(BLOCK) * 4, 0))
            for _ in range(big // len(BLOCK)):
                f.write(BLOCK)


class Client:
    """Just enough POP3 to log in and RETR fast; checks each response's framing."""

    def __init__(self, port: int, tls: bool = False) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        if tls:  # POP3S (RFC 8314 implicit TLS); the bench's own self-signed certificate
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.sock = ctx.wrap_socket(self.sock)
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


def children(pid: int, any_name: bool = False) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if int(fields[1]) == pid and (any_name or comm == "pop3"):
                out.append(int(entry))
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _times(pid: int) -> list[int]:
    with open(f"/proc/{pid}/stat") as f:
        return [int(x) for x in f.read().rsplit(")", 1)[1].split()[11:15]]


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid``, its reaped children, and its live children.

    Wall-clock MB/s moves with whatever else the machine runs; server CPU per MiB
    is the steadier figure on a shared box.
    """
    utime, stime, cutime, cstime = _times(pid)
    total = utime + stime + cutime + cstime
    for child in children(pid, any_name=True):
        try:
            total += sum(_times(child)[:2])
        except OSError:
            pass
    return total / CLK_TCK


def make_certificate(work: str) -> tuple[str, str]:
    """A self-signed RSA-2048 certificate and key for both servers' POP3S listeners."""
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.chmod(key, 0o644)
    return cert, key


def start_dovecot(work: str, mail_root: str, port: int, base: str,
                  tls_port: int, cert: str, key: str) -> subprocess.Popen:
    """Dovecot in the foreground; ``base`` is its run directory (short: socket paths)."""
    passwd = os.path.join(work, "dovecot.passwd")
    uid = gid = 65534  # nobody: Dovecot will not access mail as root
    for dirpath, _dirs, files in os.walk(mail_root):
        os.chown(dirpath, uid, gid)
        for name in files:
            os.chown(os.path.join(dirpath, name), uid, gid)
    os.makedirs(os.path.join(work, "dovecot-home"), exist_ok=True)
    os.chown(os.path.join(work, "dovecot-home"), uid, gid)
    with open(passwd, "w") as f:
        for user, pw in USERS.items():
            f.write(f"{user}:{{PLAIN}}{pw}:{uid}:{gid}::{work}/dovecot-home::\n")
    conf = os.path.join(work, "dovecot.conf")
    with open(conf, "w") as f:
        f.write(f"""
base_dir = {base}
state_dir = {base}/state
log_path = {work}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1000
last_valid_uid = 0
mail_location = maildir:{mail_root}/%d/%n
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
}}
""")
    proc = subprocess.Popen(["dovecot", "-F", "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(work, "dovecot.err"), "wb"))
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(open(os.path.join(work, "dovecot.err")).read()) from None
            time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir")
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="pop3bench")
    os.makedirs(work, exist_ok=True)
    os.chmod(work, 0o755)  # Dovecot's auth process (user dovecot) reads dovecot.passwd here

    cert, key = make_certificate(work)
    mh = MailHostProcess(os.path.join(work, "mailhost"), users=dict(USERS),
                         extra={"tls": {"cert": cert, "key": key}})
    mh_tls_port = free_port()
    mh.extra["pop3"] = {"listen_tls": [f"tcp:{mh_tls_port}:interface=127.0.0.1"]}
    os.makedirs(mh.workdir, exist_ok=True)
    mh.configure()
    print("writing maildirs ...", flush=True)
    write_maildir(mh.maildir("small@example.test"),
                  [message(50 * 1024, n) for n in range(1, 1001)])
    write_maildir(mh.maildir("big@example.test"), big=100 * MiB)
    dovecot_mail = os.path.join(work, "dovecot-mail")
    for user in USERS:
        local, _, domain = user.partition("@")
        src = mh.maildir(user)
        dst = os.path.join(dovecot_mail, domain, local)
        for sub in ("tmp", "new", "cur"):
            shutil.copytree(os.path.join(src, sub), os.path.join(dst, sub))

    mh.start()
    dport, dport_tls = free_port(), free_port()
    base = tempfile.mkdtemp(prefix="dcb", dir="/tmp")
    try:
        dovecot = start_dovecot(work, dovecot_mail, dport, base, dport_tls, cert, key)
    except Exception:
        mh.stop()
        shutil.rmtree(base, ignore_errors=True)
        raise
    servers = {"mailhost": mh.ports["pop3"], "dovecot": dport}
    tls_ports = {"mailhost": mh_tls_port, "dovecot": dport_tls}
    results: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    pids = {"mailhost": mh.pid, "dovecot": dovecot.pid}
    mh_base = rss_kib(mh.pid)
    mh_peak = PeakRss(lambda: [mh.pid])
    dc_peak = PeakRss(lambda: children(dovecot.pid))
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
        dovecot.send_signal(signal.SIGTERM)
        try:
            dovecot.wait(15)
        except subprocess.TimeoutExpired:
            dovecot.kill()
        shutil.rmtree(base, ignore_errors=True)

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
