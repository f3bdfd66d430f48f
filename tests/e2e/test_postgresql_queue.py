"""The outbound queue on PostgreSQL (issue 19): two ``twistd mailhost`` nodes, on
127.0.0.1 and 127.0.0.2, one database, relaying through a scripted remote SMTP server
(127.0.0.3) that counts what it acknowledged.

1,000 messages are queued through both nodes. Once node A has delivered a hundred,
the remote stops answering A's final dots (A's sessions hang mid-delivery, nothing of
theirs acknowledged), node A is killed with SIGKILL, and node B, after A's leases
expire, delivers what A held. Every message is acknowledged exactly once: no two live
nodes deliver one message, and none is lost with the dead node. Then ``mailhost queue``
lists, shows, retries and deletes on the rows.
"""

from __future__ import annotations

import imaplib
import json
import smtplib
import socketserver
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg

from mailhost.db import migrations
from tests.mailhost_process import free_port

TOTAL = 1000
A_FIRST = 100  # deliveries A makes before the remote stops answering it
LEASE, POLL = 3.0, 0.5


class CountingRemote(socketserver.ThreadingTCPServer):
    """A minimal SMTP server: counts each message (by its X-Seq header) when it sends
    the 250 to the final dot. Once ``hold_from`` has had ``A_FIRST`` messages
    acknowledged, its final dots get no answer (the connection waits until closed)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, hold_from: str) -> None:
        super().__init__(address, RemoteHandler)
        self.lock = threading.Lock()
        self.acked: Counter[str] = Counter()
        self.by_client: Counter[str] = Counter()
        self.acked_by: dict[str, list[str]] = {}
        self.hold_from = hold_from
        self.holding = threading.Event()
        self.held = 0
        #: Seconds each final dot waits for its 250 (a slow remote).
        self.delay = 0.0


class RemoteHandler(socketserver.StreamRequestHandler):
    timeout = 120

    def handle(self) -> None:
        server: CountingRemote = self.server  # type: ignore[assignment]
        client = self.client_address[0]
        w = self.wfile
        w.write(b"220 remote.test ESMTP\r\n")
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                w.write(b"250-remote.test\r\n250 PIPELINING\r\n")
            elif verb == b"RCPT" and b"refuse@" in line:
                w.write(b"550 5.1.1 no such user\r\n")
            elif verb == b"RCPT" and b"later@" in line:
                w.write(b"451 4.3.0 not now\r\n")
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                w.write(b"250 ok\r\n")
            elif verb == b"QUIT":
                w.write(b"221 bye\r\n")
                return
            elif verb == b"DATA":
                w.write(b"354 go\r\n")
                seq = None
                while True:
                    body = self.rfile.readline(65536)
                    if not body:
                        return
                    if body == b".\r\n":
                        break
                    if body.startswith(b"X-Seq: "):
                        seq = body[7:].strip().decode()
                with server.lock:
                    hold = client == server.hold_from and server.holding.is_set()
                    if hold:
                        server.held += 1
                    else:
                        server.acked[seq or "?"] += 1
                        server.by_client[client] += 1
                        server.acked_by.setdefault(client, []).append(seq or "?")
                        if client == server.hold_from and server.by_client[client] >= A_FIRST:
                            server.holding.set()
                if hold:
                    while self.rfile.readline(4096):  # no answer, ever: until A dies
                        pass
                    return
                time.sleep(server.delay)
                w.write(b"250 2.0.0 queued\r\n")
            else:
                w.write(b"502 what\r\n")


def message(origin: str, n: int) -> bytes:
    return (f"From: sender@a.test\r\nTo: rcpt@remote.test\r\nSubject: queued {n}\r\n"
            f"X-Seq: {origin}-{n}\r\n\r\nbody {n}\r\n").encode()


def submit(host: str, port: int, origin: str, numbers: range) -> None:
    with smtplib.SMTP(host, port, timeout=60) as s:
        for n in numbers:
            s.sendmail("sender@a.test", ["rcpt@remote.test"], message(origin, n))


def test_1000_messages_through_two_nodes_each_delivered_once_and_a_killed_node_s_by_the_other(
        mailhost_factory, pg_dsn, tmp_path):
    with psycopg.connect(pg_dsn) as conn:
        migrations.upgrade(conn)
    remote_port = free_port("127.0.0.3")
    remote = CountingRemote(("127.0.0.3", remote_port), hold_from="127.0.0.1")
    threading.Thread(target=remote.serve_forever, daemon=True).start()
    try:
        run(mailhost_factory, pg_dsn, remote, remote_port)
    finally:
        remote.shutdown()
        remote.server_close()


def node_config(dsn: str, source: str, remote_port: int) -> dict:
    return {
        "store": {"backend": "postgresql", "dsn": dsn},
        "queue": {"backend": "postgresql", "lease": LEASE, "poll": POLL},
        "smtp": {"relay_networks": ["127.0.0.0/8"]},
        "outbound": {"smarthost": f"127.0.0.3:{remote_port}", "tls_policy": "none",
                     "source_address": source, "fsync": False, "retry_initial": 1.0,
                     "max_per_domain": 5},
    }


def run(mailhost_factory, dsn, remote, remote_port) -> None:
    a = mailhost_factory("a", host="127.0.0.1",
                         extra=node_config(dsn, "127.0.0.1", remote_port)).start()
    b = mailhost_factory("b", host="127.0.0.2",
                         extra=node_config(dsn, "127.0.0.2", remote_port)).start()
    started = time.monotonic()
    half = TOTAL // 2
    with ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(submit, a.host, a.ports["smtp"], "a", range(0, half, 2)),
                pool.submit(submit, a.host, a.ports["smtp"], "a", range(1, half, 2)),
                pool.submit(submit, b.host, b.ports["smtp"], "b", range(0, half, 2)),
                pool.submit(submit, b.host, b.ports["smtp"], "b", range(1, half, 2))]
        for job in jobs:
            job.result(timeout=60)
    queued = time.monotonic()

    # A is stuck: its sessions wait for answers to their final dots. Kill it mid-run.
    assert remote.holding.wait(30), dict(remote.by_client)
    deadline = time.monotonic() + 10
    while remote.held < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert remote.held >= 1
    with remote.lock:
        a_before = remote.by_client["127.0.0.1"]
    with psycopg.connect(dsn) as conn:
        a_leased = conn.execute("SELECT count(*) FROM queue WHERE lease_owner LIKE %s",
                                (f"%:{a.pid}:%",)).fetchone()[0]
    assert a_leased > 0
    a.kill()
    killed = time.monotonic()

    deadline = killed + 40
    while time.monotonic() < deadline:
        with remote.lock:
            if len(remote.acked) >= TOTAL:
                break
        time.sleep(0.2)
    done = time.monotonic()
    with remote.lock:
        acked = dict(remote.acked)
        by_client = dict(remote.by_client)
        b_seqs = list(remote.acked_by.get("127.0.0.2", []))
    expected = {f"{o}-{n}" for o in "ab" for n in range(half)}
    assert set(acked) == expected, (len(acked), sorted(expected - set(acked))[:10])
    assert [seq for seq, count in acked.items() if count != 1] == []
    assert by_client["127.0.0.1"] == a_before >= A_FIRST
    # B delivered what A held: mail A took in, after A's leases ran out.
    taken_over = [s for s in b_seqs if s.startswith("a-")]
    assert len(taken_over) >= a_leased - 1 > 0
    assert done - killed >= LEASE - 0.5
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM queue").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM queue_chunks").fetchone()[0] == 0
    print(f"queued in {queued - started:.1f}s, A killed at {killed - started:.1f}s "
          f"holding {a_leased}, all acknowledged at {done - started:.1f}s")

    queue_commands(b, remote)
    bounce(b)


def mailhost_cli(node, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailhost.cli.main", "--config", node.config_path,
                           *args], capture_output=True, text=True, timeout=60)


def queue_commands(b, remote) -> None:
    """``mailhost queue`` on the rows: a message the remote refuses for now (451) is
    listed, shown with its headers, and deleted; B hears of the delete."""
    with smtplib.SMTP(b.host, b.ports["smtp"], timeout=30) as s:
        s.sendmail("sender@a.test", ["later@remote.test"], message("c", 0))
    qid = ""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not qid:  # until its first retry is recorded
        out = mailhost_cli(b, "queue", "list", "--json")
        assert out.returncode == 0, out.stderr
        listed = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
        if listed and listed[0]["recipients"][0]["attempts"] >= 1:
            qid = listed[0]["id"]
        time.sleep(0.2)
    assert qid
    assert "451 4.3.0 not now" in mailhost_cli(b, "queue", "list").stdout
    shown = mailhost_cli(b, "queue", "show", qid)
    assert shown.returncode == 0, shown.stderr
    assert "X-Seq: c-0" in shown.stdout
    assert mailhost_cli(b, "queue", "delete", qid).returncode == 0
    assert mailhost_cli(b, "queue", "show", qid).returncode == 1
    deadline = time.monotonic() + 10  # B's next look at the requests or its leases
    while time.monotonic() < deadline:
        log = b.log_since_start()
        if f"{qid} deleted by request" in log or f"{qid} dropped (deleted" in log:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"B never heard that {qid} was deleted")


def bounce(b) -> None:
    """A recipient the remote refuses (550): the queue on PostgreSQL sends the sender a
    DSN as the spool does, into the PostgreSQL store, read over IMAP on B."""
    user, password = "alice@example.test", "alice-pw"
    with smtplib.SMTP(b.host, b.ports["smtp"], timeout=30) as s:
        s.sendmail(user, ["refuse@remote.test"], message("d", 0))
    m = imaplib.IMAP4(b.host, b.ports["imap"], timeout=30)
    m.login(user, password)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        typ, data = m.select("INBOX")
        if data[0] != b"0":
            break
        time.sleep(0.2)
    typ, data = m.fetch("1", "(BODY.PEEK[])")
    dsn = data[0][1]
    assert b"refuse@remote.test" in dsn and b"550 5.1.1 no such user" in dsn
    assert b"X-Seq: d-0" in dsn
    m.logout()
