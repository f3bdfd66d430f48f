#!/usr/bin/env python3
"""SMTP ingest benchmark: mailhost vs aiosmtpd (fsync), stock Twisted mail (no fsync), Postfix.

Starts the servers on loopback, drives each with Postfix's ``smtp-source`` (Debian
package ``postfix``), checks that every message landed in the Maildir, and reports
msg/s and server CPU time per message, median of interleaved runs, with ratios
against each peer.

Rate is messages / time from the start of ``smtp-source`` until the last message is
in the Maildir (new/ or cur/). mailhost, aiosmtpd and stock Twisted put the file in
new/ before they answer 250, so for them this is the time ``smtp-source`` takes; Postfix answers
250 once the queue file is fsynced and delivers afterwards (qmgr -> virtual(8)), so its
clock runs on until the queue has drained into the Maildir. The stop time is the
later of smtp-source's exit and the newest mtime of a new/ or cur/ directory (each
delivery renames or links a file from tmp/ into new/, which sets that directory's
mtime), so the polling interval does not add to any server's time.

CPU is utime+stime from /proc/<pid>/stat of the server process. For Postfix it is the
sum over the whole private instance: every live process whose process group is the
master's (master calls setsid(), and all daemons are its children) or whose parent is
the master, plus the master's cutime+cstime, which holds the CPU of the children it
has already reaped (smtpd, cleanup, virtual, trivial-rewrite... exit after max_use or
max_idle). A child that exits between the two readings is thus counted once, in full.

Postfix (enabled when ``postfix`` is installed; ``--no-postfix`` skips it) runs as a
private instance, as root, from its own config_directory under the workdir
(``postfix -c DIR start``/``stop``), with its own queue and data directories; it never
touches /etc/postfix's instance. It listens on 127.0.0.1:<free port>, delivers every
recipient at example.test through virtual(8) to one Maildir (``static:bench/``) owned
by nobody:nogroup, and logs to ``<workdir>/postfix/postfix.log`` via postlogd. Its
defaults fsync the queue file (cleanup) before 250 and the Maildir file before
virtual(8) links it into new/ (checked with strace), so it is durable like mailhost and
aiosmtpd. See ``Postfix.configure``.

A fifth server, ``bench/peers/twisted_mail_durable.tac``, is the stock Twisted server
with only fdatasync + a directory fsync (in the thread pool) added before the 250. It
shows what durability alone costs Twisted's own SMTP code, which bounds what a
durable single-process Twisted server can reach against the stock one.

``--idle`` keeps an IMAP client in IDLE on mailhost's INBOX throughout (IMAP on, on
loopback), so the folder is open and every delivery is numbered and pushed as it
arrives; without it nobody opens the INBOX during the runs.

``--pipeline`` (issue 15) runs instead only mailhost, at 20 sessions x 4 KiB, three
ways in the same interleaved runs: no pipeline stages; the checks (``spf``, ``dkim``,
``dmarc``, ``auth_results``); and DKIM signing (``dkim_sign``, the client in
``smtp.relay_networks``). Every row gets the same message (``smtp-source -F``), one
signed with an RSA-2048 key published, with SPF and DMARC records, by a
``TestDNSServer`` in a child process; after the warm-up every answer comes from
mailhost's DNS cache. The table gives the server CPU each stage set adds per message.
Two more rows measure one milter round trip per message (the ``milter`` stage): a
trivial accept-all milter (a child process on our codec that asks for every step),
and rspamd 3.x's milter proxy as the tests run it (tests/milter/daemons.py).

``--capture`` (issue 20) runs instead only mailhost, at 20 sessions x 4 KiB, in the same
interleaved runs: the ordinary server (fsync on) and capture mode (``[capture]``) as
``tap-configs/capture.toml`` runs it (fsync off) and with fsync on, each message to one
recipient and, in capture mode, to 5 recipients (``smtp-source -r 5``: 5 mailboxes, each
made on its first message). Mailpit's documentation claims 70-100 messages/s for its kind.
Measured (2026-12-05, 2 shared cores, load 2-9 during the run, ``--runs 3 --scale 0.5``,
1500 messages a row, medians): ordinary with fsync 378 msg/s, 1.37 ms CPU/msg; capture as
capture.toml runs it 534 msg/s, 1.00 ms; capture with fsync 341 msg/s, 1.40 ms; capture
with 5 recipients a message 356 msg/s (1780 stored copies/s), 1.83 ms. Single runs
varied by up to 40% with the other load on the machine.

``--store postgresql`` (issue 19) runs instead only mailhost, in the same interleaved
runs and at every load: the Maildir store (fsync on), one node on the PostgreSQL store,
and ``--nodes N`` (default 2) nodes on 127.0.0.1, 127.0.0.2, ... on one database, the
sessions and messages split among them (one smtp-source each, at once). The database
is a private cluster (``bench/bench_pg.py``) with PostgreSQL's durable defaults (fsync,
synchronous_commit; ``--pg-nofsync`` turns them off), a database per row. A message
counts when its row is committed (before the 250). The table gives mailhost's CPU (all
nodes) and the whole cluster's CPU per message, then the statements that took the
database's time (pg_stat_statements). Measured (2026-12-05, 2 shared cores, load
14-16, ``--store postgresql --nodes 2 --runs 3 --scale 0.5``, medians; msg/s, mailhost
CPU + PostgreSQL CPU per message): 20 sessions x 4 KiB: Maildir 328, 2.18 ms; 1 node
295, 1.26 + 0.36 ms (0.90x); 2 nodes 271, 1.48 + 0.49 ms (0.83x). 1 session: 96; 89
(0.93x); 109 (1.14x). 20 x 100 KiB: 157; 145 (0.93x); 134 (0.86x). Before the store's
group commit (one transaction per delivery, each waiting on the folder lock through
the one before's WAL flush; one run, scale 0.1, load 9) the 1-node row was 0.42x, 0.74x
and 0.47x. Two nodes on one database do not add throughput into one mailbox: both
number UIDs under the same folder lock.

Usage: python3 bench/smtp_ingest.py [--runs 3] [--scale 1.0] [--workdir DIR]
                                    [--no-postfix] [--no-durable-twisted] [--no-fsync-row]
                                    [--idle] [--pipeline] [--capture]
                                    [--load I] [--only mailhost,aiosmtpd] [--profile FILE]
                                    [--baseline DIR]
                                    [--store postgresql [--nodes 2] [--pg-nofsync]]

``--load I`` runs only row I of the loads (0: 20 sessions x 4 KiB), ``--only`` only the
named servers (one row each, CPU against aiosmtpd's), and ``--profile FILE`` runs the
mailhost server under twistd's cProfile, its pstats saved to FILE when it stops.
``--baseline DIR`` adds the row ``mailhost-base``: the same server run from another source
tree (``git archive main | tar -x -C DIR``), for a before/after in the same runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
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
PEERS = os.environ.get("MAILHOST_BENCH_PEERS",
                       os.path.join(os.path.dirname(ROOT), "shared", "bench-peers"))
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
    return maildir_state(root)[0]


def maildir_state(root: str) -> tuple[int, float]:
    """(messages in new/ and cur/ dirs under root, newest mtime of those dirs, epoch s).

    A message is counted by its base name once per Maildir: an IMAP session (--idle)
    renames new/ files into cur/ while the walk runs, and would be seen in both."""
    seen, newest = set(), 0.0
    for dirpath, _dirs, files in os.walk(root):
        if os.path.basename(dirpath) in ("new", "cur"):
            parent = os.path.dirname(dirpath)
            seen.update((parent, f.partition(":")[0]) for f in files)
            newest = max(newest, os.stat(dirpath).st_mtime)
    return len(seen), newest


@dataclass
class Server:
    name: str
    workdir: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    host: str = "127.0.0.1"

    @property
    def maildir_root(self) -> str:
        return os.path.join(self.workdir, "mail")

    def targets(self) -> list[str]:
        """Where smtp-source sends (``host:port``); a load is split among them."""
        return [f"{self.host}:{self.port}"]

    def delivered(self) -> tuple[int, float]:
        """(messages stored so far, epoch seconds of the last store or 0 if unknown)."""
        return maildir_state(self.maildir_root)

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        """Server CPU (user+system) so far, in seconds."""
        return cpu_seconds(self.proc.pid)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        cmd, env = self.command()
        log = open(os.path.join(self.workdir, "server.log"), "ab")
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env={**os.environ, **env},
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        self.wait_for_banner()

    def wait_for_banner(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            if not self.running():
                raise SystemExit(f"{self.name} exited; see {self.workdir}/server.log")
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
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
    idle = False  # --idle: an IMAP client IDLEs on INBOX throughout
    extra = ""  # more TOML (--pipeline: [pipeline], [dns], relay networks)
    keys: dict[str, bytes] = {}  # (--pipeline) "<domain>/<selector>" -> PEM, into data/dkim/
    relay_networks: list[str] = []  # smtp.relay_networks (--pipeline: dkim_sign's clients)
    profile = ""  # --profile FILE: twistd's cProfile of the server, saved at stop
    root = ROOT  # the source tree it runs (--baseline: another checkout)

    def start(self) -> None:
        if self.idle:
            self.imap_port = free_port()
        super().start()
        if self.idle:
            self.idler = IdleClient(self.imap_port)

    def command(self):
        from mailhost.auth.hashing import hash_password
        from mailhost.auth.passwd import PasswdEntry, PasswdFile

        data = os.path.join(self.workdir, "data")
        os.makedirs(data, exist_ok=True)
        PasswdFile(os.path.join(data, "passwd")).save(
            {"bench@example.test": PasswdEntry("bench@example.test", hash_password("bench"))})
        for name, pem in self.keys.items():
            path = os.path.join(data, "dkim", name + ".pem")
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            with open(path, "wb") as f:
                f.write(pem)
        config = os.path.join(self.workdir, "mailhost.toml")
        with open(config, "w") as f:
            f.write(f"""[server]
hostname = "mailhost.bench"
domains = ["example.test"]
data_dir = "{data}"
allow_plaintext_auth = "loopback"
[auth]
create_postmaster = false
{self.store_section()}
[smtp]
listen = ["tcp:{self.port}:interface={self.host}:backlog=256"]
max_connections = 500
max_connections_per_ip = 500
relay_networks = {json.dumps(self.relay_networks)}
[submission]
listen = []
[pop3]
listen = []
[imap]
listen = [{f'"tcp:{self.imap_port}:interface=127.0.0.1"' if self.idle else ""}]
{self.extra}""")
        prof = ([f"--profile={self.profile}", "--profiler=cprofile", "--savestats"]
                if self.profile else [])
        return [sys.executable, TWISTD, "-n", "--pidfile=", *prof, "mailhost",
                "--config", config], {"PYTHONPATH": self.root}

    def store_section(self) -> str:
        return (f'[store]\nbackend = "maildir"\npath = "{self.maildir_root}"\n'
                f'fsync = {"true" if self.fsync else "false"}')


class IdleClient:
    """An IMAP session in IDLE on bench@'s INBOX, its untagged responses drained by a
    daemon thread (they are counted, never checked)."""

    def __init__(self, port: int) -> None:
        import imaplib
        import threading

        self.imap = imaplib.IMAP4("127.0.0.1", port, timeout=60)
        self.imap.login("bench@example.test", "bench")
        self.imap.select("INBOX")
        self.imap.send(b"i1 IDLE\r\n")
        self.lines = 0
        self.imap.sock.settimeout(None)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        try:
            while self.imap.readline():
                self.lines += 1
        except OSError:
            pass


class MailhostWorkers(Mailhost):
    """``--workers N``: the same server with ``server.workers = N``. Its CPU is the
    supervisor's plus every worker's (live, plus the reaped ones' cutime+cstime)."""

    workers = 2

    def command(self):
        cmd, env = super().command()
        config = os.path.join(self.workdir, "mailhost.toml")
        with open(config) as f:
            text = f.read()
        with open(config, "w") as f:
            f.write(text.replace("[server]\n", f"[server]\nworkers = {self.workers}\n", 1))
        return cmd, env

    def cpu_seconds(self) -> float:
        total = cpu_seconds(self.proc.pid)
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[13]) + int(fields[14])) / CLK_TCK  # cutime, cstime
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                        total += cpu_seconds(int(entry))
            except (OSError, ValueError, IndexError):
                continue
        return total

    def wait_for_banner(self) -> None:
        super().wait_for_banner()
        time.sleep(3)  # every worker up, not only the first to answer


class MailhostPostgres(Mailhost):
    """``--store postgresql``: one node on the bench's PostgreSQL database (``dsn``);
    a message counts as delivered when its row is committed (before the 250)."""

    dsn = ""

    def store_section(self) -> str:
        return f'[store]\nbackend = "postgresql"\ndsn = "{self.dsn}"'

    def delivered(self) -> tuple[int, float]:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT coalesce(sum(messages), 0) FROM accounts").fetchone()
        return int(row[0]), 0.0


class PostgresNodes(Server):
    """N ``MailhostPostgres`` nodes on one database, on 127.0.0.1, 127.0.0.2, ...: the
    load is split among them; the CPU is every node's."""

    def __init__(self, name: str, workdir: str, dsn: str, nodes: int) -> None:
        super().__init__(name, workdir)
        self.nodes = []
        for i in range(nodes):
            node = MailhostPostgres(f"{name}-{i + 1}", os.path.join(workdir, f"node{i + 1}"),
                                    host=f"127.0.0.{i + 1}")
            node.dsn = dsn
            self.nodes.append(node)

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def running(self) -> bool:
        return all(node.running() for node in self.nodes)

    def targets(self) -> list[str]:
        return [t for node in self.nodes for t in node.targets()]

    def delivered(self) -> tuple[int, float]:
        return self.nodes[0].delivered()

    def cpu_seconds(self) -> float:
        return sum(node.cpu_seconds() for node in self.nodes)


class MailhostNoFsync(Mailhost):
    """Same server, fsync off: isolates protocol cost from disk latency."""

    fsync = False


class Aiosmtpd(Server):
    def command(self):
        return [sys.executable, os.path.join(PEERS, "aiosmtpd_maildir.py"), "--port",
                str(self.port), "--maildir", self.maildir_root], {}


class StockTwisted(Server):
    tac = os.path.join(PEERS, "twisted_mail.tac")

    def command(self):
        return [sys.executable, TWISTD, "-n", "--pidfile=", "--logfile=twistd.log", "-y",
                self.tac], {"TWMAIL_PORT": str(self.port), "TWMAIL_DIR": self.maildir_root,
                            "MAILHOST_BENCH_PEERS": PEERS}


class DurableTwisted(StockTwisted):
    """The stock server plus fdatasync + directory fsync before 250, nothing else:
    what durability alone costs Twisted's own SMTP code (bench/peers/)."""

    tac = os.path.join(ROOT, "bench", "peers", "twisted_mail_durable.tac")


POSTFIX_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:{port} inet n -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix(Server):
    """A private Postfix instance (postfix -c DIR), delivering to one Maildir via virtual(8)."""

    uid = gid = 65534  # nobody:nogroup; above virtual_minimum_uid (100)

    @property
    def config_dir(self) -> str:
        return os.path.join(self.workdir, "etc")

    @property
    def queue_dir(self) -> str:
        return os.path.join(self.workdir, "queue")

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["postfix", "-c", self.config_dir, *args], check=check,
                              timeout=60, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def configure(self) -> None:
        data = os.path.join(self.workdir, "data")
        for d in (self.config_dir, self.queue_dir, data, self.maildir_root):
            os.makedirs(d, exist_ok=True)
        # virtual(8) creates the Maildir as nobody, so that uid must reach and write it.
        for d in (os.path.dirname(self.workdir), self.workdir):
            os.chmod(d, os.stat(d).st_mode | 0o111)
        os.chown(self.maildir_root, self.uid, self.gid)
        os.chown(data, pwd.getpwnam("postfix").pw_uid, -1)  # data_directory: mail_owner's
        with open(os.path.join(self.config_dir, "main.cf"), "w") as f:
            f.write(f"""\
compatibility_level = 3.6
config_directory = {self.config_dir}
queue_directory = {self.queue_dir}
data_directory = {data}
maillog_file = {self.workdir}/postfix.log
maillog_file_prefixes = {self.workdir}
myhostname = postfix.bench
mydomain = bench
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
relay_domains =
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = example.test
virtual_mailbox_base = {self.maildir_root}
virtual_mailbox_maps = static:bench/
virtual_uid_maps = static:{self.uid}
virtual_gid_maps = static:{self.gid}
virtual_minimum_uid = 100
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
smtpd_client_event_limit_exceptions = $mynetworks
default_process_limit = 500
virtual_destination_concurrency_limit = 50
smtpd_peername_lookup = no
biff = no
append_dot_mydomain = no
""")
        with open(os.path.join(self.config_dir, "master.cf"), "w") as f:
            f.write(POSTFIX_MASTER_CF.format(port=self.port))

    def start(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        self.configure()
        r = self.postfix("start", check=False)
        with open(os.path.join(self.workdir, "server.log"), "a") as log:
            log.write(r.stdout)
        if r.returncode != 0:
            raise SystemExit(f"postfix start failed:\n{r.stdout}")
        self.wait_for_banner()

    def master_pid(self) -> int | None:
        try:
            with open(os.path.join(self.queue_dir, "pid", "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def running(self) -> bool:
        pid = self.master_pid()
        return pid is not None and os.path.exists(f"/proc/{pid}")

    def instance_pids(self, master: int | None = None) -> list[int]:
        """Every process (but the master) in the master's process group or whose parent it is."""
        master = master or self.master_pid()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ppid, pgrp = int(fields[1]), int(fields[2])
            if int(entry) != master and (pgrp == master or ppid == master):
                pids.append(int(entry))
        return pids

    def cpu_seconds(self) -> float:
        # Children first, then the master: a child reaped in between is counted twice
        # (once alive, once in cutime) rather than not at all; it is rare and tiny.
        total = 0.0
        for pid in self.instance_pids():
            try:
                total += cpu_seconds(pid)
            except OSError:
                pass  # exited and reaped since the listing: now in master's cutime
        with open(f"/proc/{self.master_pid()}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # utime, stime, cutime, cstime of the master
        return total + sum(int(x) for x in fields[11:15]) / CLK_TCK

    def stop(self) -> None:
        master = self.master_pid()
        if master is None or not os.path.exists(f"/proc/{master}"):
            return
        self.postfix("stop", check=False)  # SIGTERM to master, waits up to 5 s, then -9
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (
                os.path.exists(f"/proc/{master}") or self.instance_pids(master)):
            time.sleep(0.2)
        # Anything of this instance still alive (still in the master's process group):
        # kill it by PID. Nothing else can be in that group.
        for p in [master, *self.instance_pids(master)]:
            try:
                with open(f"/proc/{p}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[2]) != master:
                        continue  # not ours (any more)
                os.kill(p, signal.SIGKILL)
            except (OSError, ValueError):
                pass


def drive(server: Server, sessions: int, length: int, count: int,
          message_file: str | None = None, recipients: int = 1) -> tuple[float, float]:
    """One load run: (msg/s, server CPU ms per message); exits if mail went missing.

    The clock runs from the start of smtp-source until the last message is in the
    Maildir: smtp-source's exit, or the newest mtime of a new/ or cur/ directory if
    that is later (Postfix delivers from its queue after answering 250).
    """
    before_files = server.delivered()[0]
    cpu0 = server.cpu_seconds()
    t0 = time.time()  # wall clock, comparable with directory mtimes
    body = ["-F", message_file] if message_file else ["-l", str(length)]
    rcpts = ["-r", str(recipients)] if recipients > 1 else []
    # Several targets (nodes): the sessions and messages are split among them, one
    # smtp-source each, all at once.
    targets = server.targets()[:sessions]
    shares = [(sessions // len(targets) + (i < sessions % len(targets)),
               count // len(targets) + (i < count % len(targets))) for i in range(len(targets))]
    sources = [subprocess.Popen(["smtp-source", "-s", str(s), "-m", str(m), *body, *rcpts,
                                 "-f", "a@example.test", "-t", "bench@example.test", target])
               for target, (s, m) in zip(targets, shares, strict=True)]
    for source in sources:
        if source.wait(600):
            raise SystemExit(f"smtp-source failed ({source.returncode}) on {server.name}")
    t_sent = time.time()
    # Wait (bounded) for delivery: the queue to drain for Postfix, stragglers otherwise.
    deadline = time.monotonic() + 120
    while True:
        delivered, newest = server.delivered()
        delivered -= before_files
        if delivered >= count * recipients or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    cpu = server.cpu_seconds() - cpu0
    if delivered != count * recipients:
        raise SystemExit(f"{server.name}: {delivered} of {count * recipients} copies delivered")
    elapsed = max(t_sent, newest) - t0
    return count / elapsed, cpu / count * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-fsync-row", action="store_true",
                    help="also run mailhost with fsync off (protocol cost without disk latency)")
    ap.add_argument("--no-durable-twisted", action="store_true",
                    help="skip the stock Twisted server with fsync added (bench/peers/)")
    ap.add_argument("--idle", action="store_true",
                    help="keep an IMAP client in IDLE on mailhost's INBOX (folder open)")
    ap.add_argument("--no-postfix", action="store_true",
                    help="skip the private Postfix instance (on by default if postfix is installed)")
    ap.add_argument("--pipeline", action="store_true",
                    help="only mailhost, with the message pipeline's stages off and on")
    ap.add_argument("--capture", action="store_true",
                    help="only mailhost, ordinary and in capture mode")
    ap.add_argument("--workers", type=int, default=0,
                    help="also run mailhost with server.workers = N (issue 18)")
    ap.add_argument("--load", type=int, default=None, choices=range(len(LOADS)),
                    help="only this row of LOADS (0: 20 sessions x 4 KiB)")
    ap.add_argument("--profile", default="",
                    help="cProfile the (first) mailhost server into FILE (pstats), saved at stop")
    ap.add_argument("--baseline", default="",
                    help="also run mailhost from this source tree (e.g. `git archive` of "
                         "main), as the row mailhost-base")
    ap.add_argument("--only", default="",
                    help="comma-separated server names to run (e.g. mailhost,aiosmtpd)")
    ap.add_argument("--store", choices=["maildir", "postgresql"], default="maildir",
                    help="postgresql: only mailhost, Maildir beside 1 and --nodes PostgreSQL "
                         "nodes on one private database cluster")
    ap.add_argument("--nodes", type=int, default=2,
                    help="--store postgresql: also run this many nodes (127.0.0.1, .2, ...)")
    ap.add_argument("--pg-nofsync", action="store_true",
                    help="--store postgresql: the cluster without fsync/synchronous_commit")
    args = ap.parse_args()
    Mailhost.idle = args.idle
    Mailhost.profile = os.path.abspath(args.profile) if args.profile else ""
    loads = LOADS if args.load is None else [LOADS[args.load]]
    if shutil.which("smtp-source") is None:
        raise SystemExit("smtp-source not found: apt-get install -y postfix")
    workdir = args.workdir or tempfile.mkdtemp(prefix="smtp-ingest-")
    if args.pipeline:
        pipeline_bench(workdir, args.runs, args.scale)
        return
    if args.capture:
        capture_bench(workdir, args.runs, args.scale)
        return
    if args.store == "postgresql":
        postgres_bench(workdir, args.runs, args.scale, args.nodes, not args.pg_nofsync)
        return
    servers = [Mailhost("mailhost", os.path.join(workdir, "mailhost")),
               Aiosmtpd("aiosmtpd", os.path.join(workdir, "aiosmtpd")),
               StockTwisted("twisted", os.path.join(workdir, "twisted"))]
    postfix = not args.no_postfix and shutil.which("postfix") is not None
    if postfix:
        if os.geteuid() != 0:
            raise SystemExit("the Postfix peer runs as root; use --no-postfix otherwise")
        servers.append(Postfix("postfix", os.path.join(workdir, "postfix")))
    if not args.no_durable_twisted:
        servers.append(DurableTwisted("twisted-durable", os.path.join(workdir, "twisted-dur")))
    if args.no_fsync_row:
        servers.append(MailhostNoFsync("mailhost-nofsync", os.path.join(workdir, "nofsync")))
    if args.workers:
        MailhostWorkers.workers = args.workers
        servers.append(MailhostWorkers("mailhost-workers", os.path.join(workdir, "workers")))
    if args.baseline:
        base = Mailhost("mailhost-base", os.path.join(workdir, "base"))
        base.root = os.path.abspath(args.baseline)
        servers.append(base)
    if args.only:
        servers = [s for s in servers
                   if s.name in args.only.split(",") or s.name == "mailhost-base"]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for s in servers:
            s.start()
        for s in servers:  # warm-up
            drive(s, 2, 4096, 20)
        for run in range(args.runs):
            for label, sessions, length, count in loads:
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
    if args.only:  # a subset of the servers: one row each, CPU against aiosmtpd's
        for label, *_ in loads:
            for s in servers:
                ratio = (f" ({med(label, s.name, 1) / med(label, 'aiosmtpd', 1):.2f}x "
                         "aiosmtpd's CPU)" if (label, "aiosmtpd") in results else "")
                print(f"| {label} | {s.name} | {med(label, s.name, 0):.0f}; "
                      f"{med(label, s.name, 1):.2f} ms |{ratio}")
        print(f"\nworkdir: {workdir}")
        return
    names = ["mailhost", "aiosmtpd", "twisted"] + (["postfix"] if postfix else [])
    print("| load | mailhost (fsync) | aiosmtpd (fsync) | stock Twisted (no fsync) "
          + ("| Postfix (fsync) " if postfix else "")
          + "| vs aiosmtpd | vs Twisted " + ("| vs Postfix | Postfix vs Twisted " if postfix else "")
          + "|")
    print("|---" * (len(names) + 3 + (2 if postfix else 0)) + "|")
    for label, *_ in loads:
        rate = {n: med(label, n, 0) for n in names}
        cpu = {n: med(label, n, 1) for n in names}
        cells = [f"{rate[n]:.0f}; {cpu[n]:.2f} ms" for n in names]
        m = rate["mailhost"]
        cells += [f"{m / rate['aiosmtpd']:.2f}x", f"{m / rate['twisted']:.2f}x"]
        if postfix:
            cells += [f"{m / rate['postfix']:.2f}x", f"{rate['postfix'] / rate['twisted']:.2f}x"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if not args.no_durable_twisted:
        print("\nstock Twisted with fsync added (nothing else changed): its rate against "
              "stock Twisted, and mailhost's against it\n")
        print("| load | Twisted + fsync | vs stock Twisted | mailhost vs Twisted + fsync |")
        print("|---|---|---|---|")
        for label, *_ in loads:
            d, t = med(label, "twisted-durable", 0), med(label, "twisted", 0)
            dc, m = med(label, "twisted-durable", 1), med(label, "mailhost", 0)
            print(f"| {label} | {d:.0f}; {dc:.2f} ms | {d / t:.2f}x | {m / d:.2f}x |")
    if args.no_fsync_row:
        print("\nmailhost with fsync off (protocol cost only), vs stock Twisted (also no fsync):\n")
        for label, *_ in loads:
            n, t = med(label, "mailhost-nofsync", 0), med(label, "twisted", 0)
            nc = med(label, "mailhost-nofsync", 1)
            print(f"| {label} | {n:.0f} msg/s; {nc:.2f} ms CPU | {n / t:.2f}x |")
    if args.workers:
        print(f"\nmailhost with server.workers = {args.workers} (CPU: supervisor and every "
              "worker), against workers = 1 and the peers\n")
        print("| load | workers = N | vs workers = 1 | vs aiosmtpd "
              + ("| vs Postfix " if postfix else "") + "|")
        print("|---|---|---|---" + ("|---" if postfix else "") + "|")
        for label, *_ in loads:
            w, wc = med(label, "mailhost-workers", 0), med(label, "mailhost-workers", 1)
            cells = [f"{w:.0f}; {wc:.2f} ms", f"{w / med(label, 'mailhost', 0):.2f}x",
                     f"{w / med(label, 'aiosmtpd', 0):.2f}x"]
            if postfix:
                cells.append(f"{w / med(label, 'postfix', 0):.2f}x")
            print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\nworkdir: {workdir}")


PIPELINE_ROWS = [
    ("no stages", ""),
    ("spf+dkim+dmarc+A-R", '[pipeline]\nstages = ["spf", "dkim", "dmarc", "auth_results"]\n'),
    ("dkim_sign", '[pipeline]\nstages = ["dkim_sign"]\n'
                  'dkim_selectors = { "example.test" = "bench" }\n'),
    # One milter round trip (connect, every step answered, end of message, quit):
    # a trivial accept-all milter in a child process, and rspamd's milter proxy.
    ("milter (accept-all)", '[pipeline]\nstages = ["milter"]\n'
                            'milters = { bench = "inet:{accept_port}@127.0.0.1" }\n'),
    ("milter (rspamd)", '[pipeline]\nstages = ["milter"]\n'
                        'milters = { rspamd = "inet:{rspamd_port}@127.0.0.1" }\n'),
]

#: A milter that asks for every step and answers each with continue: the cost of
#: the protocol itself, on mailhost's side.
ACCEPT_MILTER_CHILD = """
from twisted.internet import reactor, protocol
from twisted.internet.endpoints import TCP4ServerEndpoint
from mailhost.milter import protocol as p

class Accept(protocol.Protocol):
    def connectionMade(self):
        self.decoder = p.PacketDecoder()
    def dataReceived(self, data):
        for command, _ in self.decoder.feed(data):
            if command == p.C_OPTNEG:
                options = p.encode_options(p.Options(6, 0, 0))
                self.transport.write(p.encode_packet(p.R_OPTNEG, options))
            elif command == p.C_QUIT:
                self.transport.loseConnection()
            elif command != p.C_MACRO:
                self.transport.write(p.encode_packet(p.R_CONTINUE))

def up(port):
    print(port.getHost().port, flush=True)
TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
    protocol.Factory.forProtocol(Accept)).addCallback(up)
reactor.run()
"""

DNS_CHILD = """
import json, sys
from twisted.internet import reactor, defer
from mailhost.testing.dns import TestDNSServer
server = TestDNSServer(json.loads(sys.argv[1]), ttl=86400)
def up(address):
    print(address[1], flush=True)
defer.Deferred.fromCoroutine(server.start()).addCallback(up)
reactor.run()
"""


def pipeline_bench(workdir: str, runs: int, scale: float) -> None:
    """--pipeline: see the module docstring."""
    from mailhost.mailauth.dkim import DKIMSigner
    from mailhost.mailauth.dkim_keys import generate_pem, key_from_pem

    pem = generate_pem("rsa")
    key = key_from_pem("example.test", "bench", pem)
    body = "".join(f"line {i:04d} of the benchmark message body, sixty-four octets long..\n"
                   for i in range(60))
    head = ("From: a@example.test\nTo: bench@example.test\nSubject: bench\n"
            "Date: Sat, 05 Dec 2026 00:00:00 +0000\nMessage-ID: <bench@example.test>\n")
    crlf = (head + "\n" + body).replace("\n", "\r\n").encode()
    signature = DKIMSigner([key]).sign(crlf, "example.test").replace(b"\r\n", b"\n")
    message_file = os.path.join(workdir, "message.eml")
    os.makedirs(workdir, exist_ok=True)
    with open(message_file, "wb") as f:  # smtp-source appends CRLF to every line
        f.write(signature + (head + "\n" + body).encode())
    zones = {"example.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
             "_dmarc.example.test": {"TXT": ["v=DMARC1; p=reject"]},
             "bench._domainkey.example.test": {"TXT": [key.public_record]}}
    dns = subprocess.Popen([sys.executable, "-c", DNS_CHILD, json.dumps(zones)],
                           stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT})
    servers: list[Mailhost] = []
    results: dict[str, list[tuple[float, float]]] = {}
    accept = subprocess.Popen([sys.executable, "-c", ACCEPT_MILTER_CHILD],
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT})
    rspamd = None
    try:
        port = int(dns.stdout.readline())
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        from tests.milter.daemons import Rspamd

        rspamd = Rspamd(os.path.join(workdir, "rspamd"), ("127.0.0.1", port)).start()
        ports = {"accept_port": int(accept.stdout.readline()), "rspamd_port": rspamd.port}
        for i, (label, extra) in enumerate(PIPELINE_ROWS):
            extra = extra.replace("{accept_port}", str(ports["accept_port"])).replace(
                "{rspamd_port}", str(ports["rspamd_port"]))
            server = Mailhost(label, os.path.join(workdir, f"mailhost-{i}"))
            server.extra = (extra + f'[dns]\nnameservers = ["127.0.0.1:{port}"]\n'
                            if extra else "")
            if "dkim_sign" in extra:  # signs for relay-network clients only
                server.keys = {"example.test/bench": pem}
                server.relay_networks = ["127.0.0.0/8"]
            servers.append(server)
        for s in servers:
            s.start()
        label, sessions, length, count = LOADS[0]
        for s in servers:  # warm-up: fills the DNS cache
            drive(s, 2, length, 20, message_file)
        n = max(10, int(count * scale))
        for run in range(runs):
            k = run % len(servers)
            for s in servers[k:] + servers[:k]:
                rate, cpu = drive(s, sessions, length, n, message_file)
                results.setdefault(s.name, []).append((rate, cpu))
                print(f"run {run + 1} {label} {s.name:20} {rate:8.0f} msg/s "
                      f"{cpu:6.2f} ms CPU/msg", file=sys.stderr)
    finally:
        for s in servers:
            s.stop()
        if rspamd is not None:
            rspamd.stop()
        for child in (accept, dns):
            child.terminate()
            child.wait(10)
    base = statistics.median(r[1] for r in results[PIPELINE_ROWS[0][0]])
    print(f"\nmailhost, {label}, median of {runs} interleaved runs\n")
    print("| stages | msg/s | server CPU ms/msg | added by the stages |")
    print("|---|---|---|---|")
    for name, _ in PIPELINE_ROWS:
        rate = statistics.median(r[0] for r in results[name])
        cpu = statistics.median(r[1] for r in results[name])
        print(f"| {name} | {rate:.0f} | {cpu:.2f} | {cpu - base:+.2f} ms |")
    print(f"\nworkdir: {workdir}")


def postgres_bench(workdir: str, runs: int, scale: float, nodes: int, durable: bool) -> None:
    """--store postgresql: see the module docstring."""
    from bench_pg import BenchCluster, reset_statements, top_statements

    cluster = BenchCluster(durable=durable).start()
    servers: list[Server] = [Mailhost("maildir", os.path.join(workdir, "maildir"))]
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    dsns: dict[str, str] = {}
    load0 = os.getloadavg()
    try:
        for n in sorted({1, nodes}):
            name = f"pg {n} node" + ("s" if n > 1 else "")
            dsns[name] = cluster.database()
            servers.append(PostgresNodes(name, os.path.join(workdir, f"pg{n}"), dsns[name], n))
        for s in servers:
            s.start()
        for s in servers:  # warm-up (makes the account, fills the connection pools)
            drive(s, 2, 4096, 20)
        for dsn in dsns.values():
            reset_statements(dsn)
        for run in range(runs):
            for label, sessions, length, count in LOADS:
                n = max(10, int(count * scale))
                k = run % len(servers)
                for s in servers[k:] + servers[:k]:
                    db0 = cluster.cpu_seconds()
                    rate, cpu = drive(s, sessions, length, n)
                    db = (cluster.cpu_seconds() - db0) / n * 1000
                    results.setdefault((label, s.name), []).append((rate, cpu, db))
                    print(f"run {run + 1} {label:24} {s.name:10} {rate:8.0f} msg/s "
                          f"{cpu:6.2f} ms CPU/msg, database {db:5.2f} ms/msg", file=sys.stderr)
        statements = {name: top_statements(dsn, 8) for name, dsn in dsns.items()}
    finally:
        for s in servers:
            s.stop()
        cluster.stop()
    load1 = os.getloadavg()

    def med(label: str, name: str, i: int) -> float:
        return statistics.median(r[i] for r in results[(label, name)])

    names = [s.name for s in servers]
    print(f"\nmedian of {runs} interleaved runs: msg/s; mailhost CPU ms/msg (all nodes) "
          f"+ PostgreSQL CPU ms/msg; PostgreSQL {'durable (fsync, synchronous_commit)' if durable else 'without fsync'}; "
          f"load average {load0[0]:.1f} before, {load1[0]:.1f} after\n")
    print("| load | " + " | ".join(names) + " | " +
          " | ".join(f"{n} vs maildir" for n in names[1:]) + " |")
    print("|---" * (2 * len(names)) + "|")
    for label, *_ in LOADS:
        cells = [f"{med(label, 'maildir', 0):.0f}; {med(label, 'maildir', 1):.2f} ms"]
        cells += [f"{med(label, n, 0):.0f}; {med(label, n, 1):.2f} + {med(label, n, 2):.2f} ms"
                  for n in names[1:]]
        cells += [f"{med(label, n, 0) / med(label, 'maildir', 0):.2f}x" for n in names[1:]]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for name, rows in statements.items():
        print(f"\n{name}: statements by total time (pg_stat_statements, timed runs)\n")
        print("| calls | total ms | mean ms | statement |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['calls']} | {r['total_ms']} | {r['mean_ms']} | `{r['query']}` |")
    print(f"\nworkdir: {workdir}")


# (row, capture mode, fsync, recipients per message)
CAPTURE_ROWS = [
    ("ordinary, fsync", False, True, 1),
    ("capture (capture.toml: no fsync)", True, False, 1),
    ("capture, fsync", True, True, 1),
    ("capture, 5 rcpts/msg, no fsync", True, False, 5),
]


def capture_bench(workdir: str, runs: int, scale: float) -> None:
    """--capture: see the module docstring."""
    servers: list[tuple[Mailhost, int]] = []
    results: dict[str, list[tuple[float, float]]] = {}
    label, sessions, length, count = LOADS[0]
    try:
        for i, (name, capture, fsync, rcpts) in enumerate(CAPTURE_ROWS):
            server = Mailhost(name, os.path.join(workdir, f"mailhost-{i}"))
            server.fsync = fsync
            server.extra = "[capture]\nenabled = true\n" if capture else ""
            servers.append((server, rcpts))
        for s, _ in servers:
            s.start()
        for s, rcpts in servers:  # warm-up
            drive(s, 2, length, 20, recipients=rcpts)
        n = max(10, int(count * scale))
        for run in range(runs):
            k = run % len(servers)
            for s, rcpts in servers[k:] + servers[:k]:
                rate, cpu = drive(s, sessions, length, n, recipients=rcpts)
                results.setdefault(s.name, []).append((rate, cpu))
                print(f"run {run + 1} {label} {s.name:34} {rate:8.0f} msg/s "
                      f"{cpu:6.2f} ms CPU/msg", file=sys.stderr)
    finally:
        for s, _ in servers:
            s.stop()
    print(f"\nmailhost, {label}, median of {runs} interleaved runs "
          "(Mailpit's docs: 70-100 msg/s)\n")
    print("| server | msg/s | server CPU ms/msg |")
    print("|---|---|---|")
    for name, *_ in CAPTURE_ROWS:
        rate = statistics.median(r[0] for r in results[name])
        cpu = statistics.median(r[1] for r in results[name])
        print(f"| {name} | {rate:.0f} | {cpu:.2f} |")
    print(f"\nworkdir: {workdir}")


if __name__ == "__main__":
    main()
