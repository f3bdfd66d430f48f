"""``server.workers = 2``: one ``twistd -n mailhost``, two workers, real clients.

Which worker serves a connection is the kernel's choice; ``worker_of`` finds out
(through /proc: the worker holding the server side of the connection), so a test can
put two sessions on different workers on purpose.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import signal
import smtplib
import socket
import socketserver
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.mailhost_process import MailHostProcess, free_port

WORKERS = 2


@pytest.fixture
def workers_proc(tmp_path):
    proc = MailHostProcess(str(tmp_path), extra={
        "server": {"workers": WORKERS, "shutdown_grace": 10.0},
        "auth": {"max_failures": 3, "lockout": 300.0},
    }).start()
    proc.wait_workers(WORKERS)
    yield proc
    proc.kill()


def _socket_inode(server_port: int, client_port: int) -> str | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                local, remote, inode = cols[1], cols[2], cols[9]
                if (int(local.rpartition(":")[2], 16) == server_port
                        and int(remote.rpartition(":")[2], 16) == client_port):
                    return inode
    return None


def worker_of(proc: MailHostProcess, sock: socket.socket) -> int:
    """The pid of the worker that accepted ``sock`` (a connected client socket)."""
    server_port = sock.getpeername()[1]
    client_port = sock.getsockname()[1]
    for _ in range(50):
        inode = _socket_inode(server_port, client_port)
        if inode is not None:
            for pid in proc.worker_pids():
                fd_dir = f"/proc/{pid}/fd"
                for fd in os.listdir(fd_dir):
                    try:
                        if os.readlink(os.path.join(fd_dir, fd)) == f"socket:[{inode}]":
                            return pid
                    except OSError:
                        continue
        time.sleep(0.05)
    raise AssertionError("no worker holds the connection")


def connect_to_other(proc: MailHostProcess, than: int, make):
    """A new client (``make()``) served by another worker than pid ``than``."""
    for _ in range(100):
        try:
            client = make()
        except (imaplib.IMAP4.error, OSError, EOFError):
            # Refused by a connection limit: a probe closed here has not yet reached
            # the other worker through the supervisor.
            time.sleep(0.2)
            continue
        if worker_of(proc, client.sock) != than:
            return client
        # Close the file the client made of its socket too: sock.close() alone leaves
        # the connection open (the file holds the descriptor), and a limit counts it.
        if isinstance(client, imaplib.IMAP4):
            client.shutdown()
        else:  # smtplib, poplib
            client.close()
    raise AssertionError("the kernel never picked the other worker")


def message(n: int) -> bytes:
    return (f"From: sender@elsewhere.test\r\nTo: alice@example.test\r\n"
            f"Subject: workers {n}\r\nX-Seq: {n:05d}\r\n\r\n"
            + f"body of message {n}\r\n" * 20).encode()


def stored(proc: MailHostProcess) -> dict[int, int]:
    """X-Seq -> copies in alice's INBOX."""
    found: dict[int, int] = {}
    root = proc.maildir("alice@example.test")
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(root, sub)):
            with open(os.path.join(root, sub, name), "rb") as f:
                head = f.read(4096)
            seq = int(head.split(b"X-Seq: ", 1)[1][:5])
            found[seq] = found.get(seq, 0) + 1
    return found


def send_all(proc: MailHostProcess, count: int, connections: int = 10) -> list[int]:
    acked: list[int] = []
    lock = threading.Lock()

    def sender(worker: int) -> None:
        with smtplib.SMTP("127.0.0.1", proc.ports["smtp"], timeout=60) as s:
            for n in range(worker, count, connections):
                s.sendmail("sender@elsewhere.test", ["alice@example.test"], message(n))
                with lock:
                    acked.append(n)

    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(sender, range(connections)))
    return acked


def pop3_count(proc: MailHostProcess) -> int:
    pop = poplib.POP3("127.0.0.1", proc.ports["pop3"], timeout=30)
    pop.user("alice@example.test")
    pop.pass_("alice-pw")
    count = pop.stat()[0]
    pop.quit()
    return count


def test_kill_9_of_a_worker_after_last_250_loses_nothing(workers_proc):
    proc = workers_proc
    acked = send_all(proc, 300)
    victim = proc.worker_pids()[-1]
    os.kill(victim, signal.SIGKILL)  # straight after the last 250
    assert len(acked) == 300
    found = stored(proc)
    assert sorted(found) == sorted(acked)
    assert set(found.values()) == {1}, "a message was stored twice"
    # The supervisor restarts it, and the server serves exactly those messages.
    proc.wait_workers(WORKERS, started=1)
    assert victim not in proc.worker_pids()
    assert pop3_count(proc) == 300


def test_kill_9_of_the_whole_server_after_last_250_loses_nothing(workers_proc):
    proc = workers_proc
    acked = send_all(proc, 300)
    proc.kill()  # supervisor and every worker, SIGKILL
    assert len(acked) == 300
    proc.start()
    proc.wait_workers(WORKERS)
    found = stored(proc)
    assert sorted(found) == sorted(acked)
    assert set(found.values()) == {1}, "a message was stored twice"
    assert pop3_count(proc) == 300


def test_idle_in_one_worker_sees_delivery_through_the_other(workers_proc):
    proc = workers_proc
    imap = imaplib.IMAP4("127.0.0.1", proc.ports["imap"], timeout=30)
    imap.login("alice@example.test", "alice-pw")
    imap.select("INBOX")
    idle_worker = worker_of(proc, imap.sock)
    tag = imap._new_tag().decode()
    imap.send(f"{tag} IDLE\r\n".encode())
    assert imap.readline().startswith(b"+")

    smtp = connect_to_other(proc, idle_worker,
                            lambda: smtplib.SMTP("127.0.0.1", proc.ports["smtp"], timeout=30))
    smtp.sendmail("sender@elsewhere.test", ["alice@example.test"], message(1))
    delivered = time.monotonic()
    smtp.quit()
    imap.sock.settimeout(5)
    line = imap.readline()
    assert line == b"* 1 EXISTS\r\n", line
    assert time.monotonic() - delivered < 1.0, "IDLE heard of it after more than 1 s"
    imap.send(b"DONE\r\n")
    for _ in range(10):  # "* 1 RECENT" may come first
        line = imap.readline()
        if line.startswith(tag.encode()):
            break
    assert line.startswith(tag.encode() + b" OK"), line
    imap.logout()


def test_pop3_in_use_across_workers(workers_proc):
    proc = workers_proc
    first = poplib.POP3("127.0.0.1", proc.ports["pop3"], timeout=30)
    first.user("alice@example.test")
    first.pass_("alice-pw")
    second = connect_to_other(proc, worker_of(proc, first.sock),
                              lambda: poplib.POP3("127.0.0.1", proc.ports["pop3"], timeout=30))
    second.user("alice@example.test")
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_("alice-pw")
    second.close()
    first.quit()
    # Released with the first session: the lock file does not outlive it.
    third = poplib.POP3("127.0.0.1", proc.ports["pop3"], timeout=30)
    third.user("alice@example.test")
    third.pass_("alice-pw")
    third.quit()


def test_login_throttle_holds_across_workers(workers_proc):
    proc = workers_proc
    first = imaplib.IMAP4("127.0.0.1", proc.ports["imap"], timeout=30)
    failing_worker = worker_of(proc, first.sock)
    first.logout()
    for _ in range(3):  # auth.max_failures, all on one worker
        for _ in range(100):
            imap = imaplib.IMAP4("127.0.0.1", proc.ports["imap"], timeout=30)
            if worker_of(proc, imap.sock) == failing_worker:
                break
            imap.shutdown()
        with pytest.raises(imaplib.IMAP4.error):
            imap.login("alice@example.test", "wrong")
        imap.logout()
    # The other worker refuses even the right password: the lockout is the server's.
    other = connect_to_other(proc, failing_worker,
                             lambda: imaplib.IMAP4("127.0.0.1", proc.ports["imap"], timeout=30))
    with pytest.raises(imaplib.IMAP4.error, match="(?i)too many|try again later"):
        other.login("alice@example.test", "alice-pw")
    other.logout()


def test_sigterm_under_load_loses_nothing(workers_proc):
    proc = workers_proc
    acked: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    counter = iter(range(100000))

    def sender() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", proc.ports["smtp"], timeout=60) as s:
                while not stop.is_set():
                    with lock:
                        n = next(counter)
                    s.sendmail("sender@elsewhere.test", ["alice@example.test"], message(n))
                    with lock:
                        acked.append(n)
        except (smtplib.SMTPException, OSError):
            pass  # the server went away: what it acknowledged must be there

    threads = [threading.Thread(target=sender) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = proc.worker_pids()
    proc.proc.send_signal(signal.SIGTERM)
    # twistd ends by the signal it stopped for (-15), once every worker has drained.
    assert proc.proc.wait(60) in (0, -signal.SIGTERM)
    stop.set()
    for t in threads:
        t.join(60)
    assert acked
    assert proc.worker_pids() == []
    found = stored(proc)
    assert set(acked) <= set(found), f"lost: {sorted(set(acked) - set(found))[:10]}"
    assert set(found.values()) == {1}, "a message was stored twice"
    log = proc.log_since_start()
    assert "died" not in log and "killing it" not in log
    for pid in workers:
        assert f"pid={pid} stopped" in log


def test_a_dead_worker_is_restarted_and_logged(workers_proc):
    proc = workers_proc
    before = proc.worker_pids()
    os.kill(before[0], signal.SIGKILL)
    after = proc.wait_workers(WORKERS, started=1)
    assert before[0] not in after
    assert f"pid={before[0]} died" in proc.log_since_start()
    # and the server still takes mail on every worker
    assert len(send_all(proc, 20, connections=4)) == 20


class _Sink(socketserver.ThreadingTCPServer):
    """A minimal SMTP server (the smarthost): records each message's X-Seq."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SinkHandler)
        self.seqs: list[int] = []
        self.lock = threading.Lock()


class _SinkHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(30)
        self.wfile.write(b"220 sink\r\n")
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb == b"DATA":
                self.wfile.write(b"354 go\r\n")
                body = b""
                while (chunk := self.rfile.readline()) and chunk != b".\r\n":
                    body += chunk
                with self.server.lock:
                    self.server.seqs.append(int(body.split(b"X-Seq: ", 1)[1][:5]))
                self.wfile.write(b"250 ok\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            elif verb == b"EHLO":
                self.wfile.write(b"250 sink\r\n")
            else:
                self.wfile.write(b"250 ok\r\n")


def test_one_scheduler_relays_what_every_worker_spools(tmp_path):
    sink = _Sink()
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    proc = MailHostProcess(str(tmp_path), extra={
        "server": {"workers": WORKERS},
        "smtp": {"relay_networks": ["127.0.0.0/8"]},
        "outbound": {"smarthost": f"127.0.0.1:{sink.server_address[1]}",
                     "tls_policy": "none", "scan_interval": 30.0},
    }).start()
    try:
        proc.wait_workers(WORKERS)
        served_by = set()
        for n in range(20):
            with smtplib.SMTP("127.0.0.1", proc.ports["smtp"], timeout=30) as s:
                served_by.add(worker_of(proc, s.sock))
                s.sendmail("sender@elsewhere.test", ["bob@remote.test"],
                           message(n).replace(b"alice@example.test", b"bob@remote.test"))
        assert len(served_by) == WORKERS, "the kernel used one worker only"
        deadline = time.monotonic() + 20  # far below scan_interval: told, not rescanned
        while len(sink.seqs) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(sink.seqs) == list(range(20))
        log = proc.log_since_start()
        assert log.count("outbound queue started") == 1, "one scheduler, in worker 0"
    finally:
        proc.kill()
        sink.shutdown()
        sink.server_close()


def test_sighup_reloads_every_worker(workers_proc):
    proc = workers_proc
    os.kill(proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while proc.log_since_start().count("reloaded ") < WORKERS:
        assert time.monotonic() < deadline, proc.log()
        time.sleep(0.1)
    assert len(proc.worker_pids()) == WORKERS


def test_metrics_are_one_view_of_every_worker(tmp_path):
    mport = free_port()
    proc = MailHostProcess(str(tmp_path), extra={
        "server": {"workers": WORKERS},
        "metrics": {"listen": f"tcp:{mport}:interface=127.0.0.1"},
    }).start()
    try:
        proc.wait_workers(WORKERS)
        served_by = set()
        for n in range(12):
            with smtplib.SMTP("127.0.0.1", proc.ports["smtp"], timeout=30) as s:
                served_by.add(worker_of(proc, s.sock))
                s.sendmail("sender@elsewhere.test", ["alice@example.test"], message(n))
        assert len(served_by) == WORKERS
        page = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{mport}/metrics"],
                              capture_output=True, text=True, timeout=30, check=True).stdout
        accepted = [line for line in page.splitlines()
                    if line.startswith("mailhost_smtp_messages_total{")
                    and 'result="accepted"' in line]
        assert sum(float(line.rpartition(" ")[2]) for line in accepted) == 12, page
        assert f"mailhost_workers {WORKERS}.0" in page
    finally:
        proc.kill()


def test_condstore_changes_made_in_one_worker_are_newer_in_the_other(workers_proc):
    proc = workers_proc
    for n in range(3):
        with smtplib.SMTP("127.0.0.1", proc.ports["smtp"], timeout=30) as s:
            s.sendmail("sender@elsewhere.test", ["alice@example.test"], message(n))

    def imap_client() -> imaplib.IMAP4:
        return imaplib.IMAP4("127.0.0.1", proc.ports["imap"], timeout=30)

    def highest(imap: imaplib.IMAP4) -> int:
        typ, data = imap.status("INBOX", "(HIGHESTMODSEQ)")
        assert typ == "OK", data
        return int(data[0].split(b"HIGHESTMODSEQ ")[1].rstrip(b")"))

    reader = imap_client()
    reader.login("alice@example.test", "alice-pw")
    reader.enable("CONDSTORE")
    reader.select("INBOX")
    seen = highest(reader)
    writer = connect_to_other(proc, worker_of(proc, reader.sock), imap_client)
    writer.login("alice@example.test", "alice-pw")
    writer.select("INBOX")
    typ, _ = writer.store("2", "+FLAGS", "(\\Flagged)")
    assert typ == "OK"
    # A client that saw ``seen`` in the other worker asks this one what changed since.
    typ, data = writer.uid("FETCH", "1:*", f"(FLAGS) (CHANGEDSINCE {seen})")
    assert any(d and b"\\Flagged" in d for d in data), data
    writer.logout()
    # The reader's worker saw the change on disk and numbered it above what it had
    # shown: CHANGEDSINCE finds it, and HIGHESTMODSEQ moved on.
    deadline = time.monotonic() + 5
    while True:
        typ, data = reader.uid("FETCH", "1:*", f"(FLAGS) (CHANGEDSINCE {seen})")
        changed = [d for d in data if d and b"\\Flagged" in d]
        if changed or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert changed, data
    assert highest(reader) > seen
    reader.logout()


def test_connection_limit_per_address_counts_every_worker(tmp_path):
    proc = MailHostProcess(str(tmp_path), extra={
        "server": {"workers": WORKERS},
        "limits": {"exempt_networks": []},
        "imap": {"max_connections_per_ip": 2},
    }).start()
    try:
        proc.wait_workers(WORKERS)
        first = imaplib.IMAP4("127.0.0.1", proc.ports["imap"], timeout=30)
        second = connect_to_other(proc, worker_of(proc, first.sock),
                                  lambda: imaplib.IMAP4("127.0.0.1", proc.ports["imap"],
                                                        timeout=30))
        time.sleep(2)  # each worker has heard of the other's connection (loaded CI: > 0.5 s)
        for _ in range(4):  # whichever worker takes it, the third is refused
            with pytest.raises((imaplib.IMAP4.error, OSError, EOFError)):
                third = imaplib.IMAP4("127.0.0.1", proc.ports["imap"], timeout=30)
                third.noop()
        second.logout()
        # The close reaches the other worker through the supervisor: wait for it, bounded.
        deadline = time.monotonic() + 15
        while True:
            try:
                imaplib.IMAP4("127.0.0.1", proc.ports["imap"], timeout=30).logout()
                break
            except (imaplib.IMAP4.error, OSError, EOFError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        first.logout()
    finally:
        proc.kill()
