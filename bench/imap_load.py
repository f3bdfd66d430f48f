"""IMAP benchmark: mailhost (``twistd -n mailhost``) against Dovecot, in one run.

1. Load: N concurrent client processes for D seconds, each LOGIN/SELECT then a loop
   of APPEND, FETCH, STORE, UID EXPUNGE, NOOP (and re-LOGIN every 20 rounds).
   Reports commands/s, errors and each command's median, 90th percentile and mean
   latency, for both servers, and the ratio of the medians (imaplib's APPEND sends its
   literal and the final CRLF in two writes, as many clients do).
2. Large mailbox: a 100k-message Maildir generated directly on disk; times SELECT
   and ``UID FETCH 1:* (UID FLAGS)`` (cold: first open builds the index; warm: a
   second session) and the server's peak RSS.
3. Sort and search on the same mailbox, in a new session after step 2:
   ``UID SEARCH SUBJECT x`` (first: no header read yet; then repeated), ``SORT (DATE)``
   (first and repeated), ``SORT (SUBJECT)``, ``THREAD REFERENCES``, each to its tagged
   OK; wall seconds and the server's CPU seconds.
4. Resync (RFC 7162, on the same large mailbox): a QRESYNC client remembers
   UIDVALIDITY and HIGHESTMODSEQ, another session changes the flags of 100 messages,
   and the first one comes back with ``SELECT INBOX (QRESYNC (v m))``: its time (wall
   and server CPU) and the FETCH lines it got.

Targets: >= 0.5x Dovecot's command throughput with 0 errors; <= 2x its time on the
large mailbox; mailhost peak RSS <= 200 MB.

The load is a closed loop: each client sends its next command as soon as the last is
answered, so each server runs at its own saturation, and on this 2-core machine the
10 client processes share the cores with it. A server that answers faster gets more
commands and a longer run queue; its median follows its throughput. ``--rate R``
(comma separated) also runs both servers paced at R commands/s in all (Poisson
arrivals; a client behind its schedule sends at once), and ``--match-rate`` runs
mailhost paced at the commands/s Dovecot reached in its closed loop: the same work
in the same time, so the medians compare how fast each answers, not how far each is
past saturation. ``--one-client`` also runs each server with one client (no
contention): what a command costs each of them alone. Each mailhost run also reports
``server_side``: the medians mailhost's own latency histogram gives (Prometheus,
``mailhost_command_duration_seconds``: from a command's parse to its tagged reply),
so the part of a command's latency spent in the server is told from the part spent
waiting for a core or for the client (Dovecot has no such figure here).

    python bench/imap_load.py [--clients 10] [--duration 30] [--messages 100000]
                              [--skip-load] [--maildir-copy DIR] [--postgresql]
                              [--workers N] [--rate R,...] [--match-rate]
                              [--one-client]

``--postgresql`` runs every step on mailhost's PostgreSQL store too (one node, a
private cluster with PostgreSQL's durable defaults, ``bench/bench_pg.py``), in the
same run: its big mailbox is the same 100k messages, written by the store's own
loader (``mailhost store import``'s). Its CPU figures are mailhost's plus the whole
cluster's; the statements that took the time are listed (pg_stat_statements).
Measured (2026-12-05, ``--postgresql --messages 20000 --duration 20``, one run, load
15-21 on 2 shared cores): load, commands/s and CPU ms per command: PostgreSQL 225,
2.81 (1.00 of it the database's); Maildir 302, 1.11; Dovecot 229, 1.14. 20k SELECT +
FETCH, cold: PostgreSQL 0.63 s, Maildir 0.61 s, Dovecot 0.63 s; warm 0.16, 0.15,
0.13 s. The first ``SEARCH SUBJECT`` read every header, one query a message and one
cache write a message: 47 s (31 s CPU) against Maildir's 5.6 s; the later searches and
sorts are on a par. Now it reads 1,000 header blocks per query and writes the cache
2,000 entries per statement (``--postgresql --messages 20000 --skip-load``, load 1-5,
wall and CPU, mailhost's plus the cluster's): before 26.4 s (30.8 s CPU) against
Maildir's 1.23 s (1.16 s) in one run; after, two runs, 0.91 s (0.95 s) and 1.13 s
(0.93 s) against Maildir's 0.95 s (0.94 s) and 2.24 s (1.14 s), Dovecot 1.3-1.6 s. The folder lock (every write waits for the one before's commit) is
where the load's database time goes.

Step 3 on Maildir, 100k messages (2026-12-05, load 15-25 on 2 shared cores, server CPU
seconds, mailhost against Dovecot in the same run): the first ``UID SEARCH SUBJECT``
took 6.5-7.8 s against 3.2-3.7 s (1.75-2.4x) while each message was opened on the
reactor, its header parsed field by field into JSON and the date pass stat'ed it again;
reading header blocks in bulk (``IHeaderBlocks`` on Maildir: 4 system calls a file
instead of 9) and finding the wanted lines with one regex, in six runs 3.3-4.2 s
against 3.5-4.0 s (0.90-1.19x). ``SORT (SUBJECT)`` 0.96-1.0 s against 0.53 s (1.8x),
then 0.55-0.71 s against 0.52-0.59 s (1.04-1.20x). Wall times at that load follow the
scheduler more than the work (first search 0.52-0.70x, SORT (SUBJECT) 0.58-1.04x, and
2.5x in a run where mailhost's turn shared the machine with a test suite).
Later (2026-12-05, load 0-1.4) the first search was 1.35-1.83x (4.3-5.8 s, 5.7-7.9 s
CPU against 3.1-3.3 s): three header batches read at once from the page cache only
fought over the GIL. Read one at a time unless a batch waits on the disk, 1.08x (3.54 s,
3.55 s CPU against 3.29 s, 3.25 s).
"""

from __future__ import annotations

import argparse
import imaplib
import json
import math
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.dovecot_process import Dovecot  # noqa: E402
from tests.mailhost_process import MailHostProcess, free_port, rss_kib  # noqa: E402

USER, PASSWORD = "alice@example.test", "alice-pw"
MESSAGE = (b"From: load@example.test\r\nTo: alice@example.test\r\nSubject: load\r\n"
           b"Message-ID: <%d.%d@load>\r\n\r\n" + b"body line\r\n" * 40)


# ------------------------------------------------------------------------ load


def _client(args: tuple[int, float, int, float],
            ) -> tuple[int, int, str, dict[str, list[float]]]:
    port, deadline, wid, interval = args
    commands = errors = 0
    last_error = ""
    latencies: dict[str, list[float]] = {}
    started = [0.0]
    pace = random.Random(wid)
    next_at = [time.perf_counter() + pace.uniform(0, interval)]

    def ok(result, name: str = "") -> None:
        nonlocal commands, errors, last_error
        commands += 1
        if name:
            latencies.setdefault(name, []).append((time.perf_counter() - started[0]) * 1000)
        if result[0] != "OK":
            errors += 1
            last_error = repr(result)[:200]

    def start() -> None:
        if interval:
            # Paced (--rate): commands leave at Poisson arrival times, or at once when
            # the client is behind them (it cannot send before the last answer), so
            # a client that fell behind catches up and the rate is the one asked for.
            now = time.perf_counter()
            if next_at[0] > now:
                time.sleep(next_at[0] - now)
            next_at[0] += pace.expovariate(1 / interval)
        started[0] = time.perf_counter()

    rounds = 0
    c = None
    while time.time() < deadline:
        try:
            if c is None:
                c = imaplib.IMAP4("127.0.0.1", port, timeout=30)
                start()
                ok(c.login(USER, PASSWORD), "LOGIN")
                start()
                ok(c.select("INBOX"), "SELECT")
            start()
            typ, data = c.append("INBOX", None, None, MESSAGE % (wid, rounds))
            ok((typ, data), "APPEND")
            uid = None
            if typ == "OK" and b"APPENDUID" in data[0]:
                uid = data[0].split(b"APPENDUID ", 1)[1].split(b"]")[0].split()[1].decode()
            start()
            ok(c.noop(), "NOOP")
            start()
            ok(c.fetch("1:*" if rounds % 10 == 0 else "*", "(UID FLAGS RFC822.SIZE)"),
               "FETCH FLAGS")
            start()
            ok(c.fetch("*", "(BODY.PEEK[HEADER] ENVELOPE)"), "FETCH HEADER")
            if uid:
                start()
                ok(c.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)"), "STORE")
                start()
                ok(c.uid("EXPUNGE", uid), "EXPUNGE")
            rounds += 1
            if rounds % 20 == 0:
                c.logout()
                commands += 1
                c = None
        except Exception as e:  # noqa: BLE001 - a benchmark counts every failure
            errors += 1
            last_error = f"{type(e).__name__}: {e}"[:200]
            try:
                if c is not None:
                    c.shutdown()
            except Exception:  # noqa: BLE001
                pass
            c = None
    if c is not None:
        try:
            c.logout()
        except Exception:  # noqa: BLE001
            pass
    return commands, errors, last_error, latencies


def _p90(values: list[float]) -> float:
    """The 90th percentile (the value 90% of the samples are at or below)."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, (9 * len(ordered)) // 10)], 2)


def run_load(port: int, clients: int, duration: float, cpu_probe=None,
             rate: float = 0.0, server_side: ServerLatency | None = None) -> dict:
    """The mixed load; with ``cpu_probe``, also the server's CPU milliseconds per
    command (the steadier figure on a shared machine: 10 clients in lock-step wait
    on a busy single-process server, so its latency follows its CPU per command).
    With ``rate``, the clients together send about that many commands a second
    (each paced, Poisson arrivals) instead of each sending its next command as soon
    as the last is answered."""
    interval = clients / rate if rate else 0.0
    with multiprocessing.Pool(clients) as pool:
        cpu0 = cpu_probe() if cpu_probe is not None else 0.0
        hist0 = server_side.scrape() if server_side is not None else {}
        deadline = time.time() + duration
        t0 = time.time()
        results = pool.map(_client, [(port, deadline, i, interval) for i in range(clients)])
        elapsed = time.time() - t0
        cpu1 = cpu_probe() if cpu_probe is not None else 0.0
        hist1 = server_side.scrape() if server_side is not None else {}
    commands = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    merged: dict[str, list[float]] = {}
    for r in results:
        for name, values in r[3].items():
            merged.setdefault(name, []).extend(values)
    every = [v for values in merged.values() for v in values]
    cpu = {} if cpu_probe is None else {
        "server_cpu_s": round(cpu1 - cpu0, 2),
        "server_cpu_ms_per_command": round((cpu1 - cpu0) * 1000 / max(commands, 1), 3)}
    return {**cpu, "commands": commands, "errors": errors, "seconds": round(elapsed, 1),
            "commands_per_s": round(commands / elapsed, 1),
            "latency_ms": {
                name: {"median": round(statistics.median(values), 2),
                       "p90": _p90(values),
                       "mean": round(statistics.fmean(values), 2), "n": len(values)}
                for name, values in sorted(merged.items())},
            "median_latency_ms": round(statistics.median(every), 2) if every else None,
            # A closed loop's mean follows from its rate (Little: clients / rate, less
            # the clients' own time); its median also depends on how the waits spread.
            "mean_latency_ms": round(statistics.fmean(every), 2) if every else None,
            "p90_latency_ms": _p90(every) if every else None,
            **({} if server_side is None else {"server_side": server_side.summary(hist0, hist1)}),
            "last_error": next((r[2] for r in results if r[2]), "")}


def metered(workdir: str, workers: int = 0) -> tuple[MailHostProcess, ServerLatency]:
    """A mailhost with its Prometheus endpoint on, and the reader of its latencies
    (with ``workers``, the supervisor's sum of every worker's)."""
    port = free_port()
    extra: dict = {"metrics": {"listen": f"tcp:{port}:interface=127.0.0.1"}}
    if workers:
        extra["server"] = {"workers": workers}
    return MailHostProcess(workdir, extra=extra), ServerLatency(port)


class ServerLatency:
    """mailhost's own account of its command latencies: the Prometheus histogram
    ``mailhost_command_duration_seconds`` (from a command's parse to its tagged reply,
    so without the wait for a core or for the client to read), scraped before and
    after a run. Beside the clients' figures it shows how much of a command's latency
    the server spends on it, and how much the command waits outside it. Medians are
    interpolated within the histogram's buckets (0.1, 0.25, 0.5, 1, 2.5 ms, ...)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def scrape(self) -> dict[str, dict[float, float]]:
        """IMAP command -> {bucket bound: cumulative count}."""
        out: dict[str, dict[float, float]] = {}
        with urllib.request.urlopen(self.url, timeout=10) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name != "mailhost_command_duration_seconds":
                continue
            for sample in family.samples:
                labels = sample.labels
                if sample.name.endswith("_bucket") and labels.get("protocol") == "imap":
                    out.setdefault(labels["command"], {})[float(labels["le"])] = sample.value
        return out

    @staticmethod
    def summary(before: dict, after: dict) -> dict:
        delta = {cmd: {le: n - before.get(cmd, {}).get(le, 0.0) for le, n in b.items()}
                 for cmd, b in after.items()}
        every: dict[float, float] = {}
        for b in delta.values():
            for le, n in b.items():
                every[le] = every.get(le, 0.0) + n
        per = {cmd: _bucket_median(b) for cmd, b in sorted(delta.items())
               if b.get(math.inf, 0) > 0}
        return {"median_latency_ms": _bucket_median(every), "median_ms": per}


def _bucket_median(cumulative: dict[float, float]) -> float | None:
    """The median of a histogram's cumulative buckets, linear within its bucket."""
    total = cumulative.get(math.inf, 0.0)
    if total <= 0:
        return None
    low, below = 0.0, 0.0
    for le in sorted(cumulative):
        n = cumulative[le]
        if n >= total / 2:
            if le == math.inf:
                return round(low * 1000, 3)
            share = (total / 2 - below) / max(n - below, 1e-9)
            return round((low + (le - low) * share) * 1000, 3)
        low, below = le, n
    return None


# ---------------------------------------------------------------- big mailbox


def bench_messages(n: int):
    """The big mailbox's ``n`` small CRLF messages: (file name, bytes, seen, date)."""
    start = int(time.time()) - n
    filler = b"x" * 300 + b"\r\n"
    for i in range(n):
        # Threads of up to 5 (each a reply to the one before), 997 distinct senders,
        # sent dates that are not in arrival order.
        parent = b"" if i % 5 == 0 else (
            b"In-Reply-To: <b%d@example.test>\r\nReferences: <b%d@example.test>\r\n"
            % (i - 1, i - 1))
        sent = time.strftime("%a, %d %b %Y %H:%M:%S +0000",
                             time.gmtime(start - (i * 7919) % n)).encode()
        data = (b"From: Sender %d <s%d@example.test>\r\nTo: alice@example.test\r\n"
                b"Subject: %sbench %d\r\nDate: %s\r\n"
                b"Message-ID: <b%d@example.test>\r\n%s\r\n"
                % (i % 997, i % 997, b"Re: " if i % 5 else b"", i // 5, sent, i, parent)
                ) + filler
        name = "%d.M%dP1Q%d.bench,S=%d,W=%d:2,%s" % (
            start + i, i, i, len(data), len(data), "S" if i % 2 else "")
        yield name, data, bool(i % 2), float(start + i)


def generate_maildir(root: str, n: int) -> None:
    """Write ``n`` small CRLF messages straight into ``root``/cur (half of them \\Seen)."""
    for d in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for name, data, _seen, _date in bench_messages(n):
        with open(os.path.join(root, "cur", name), "wb") as f:
            f.write(data)


def generate_postgresql(dsn: str, user: str, n: int) -> None:
    """The same ``n`` messages as ``generate_maildir``, as ``user``'s INBOX in a
    PostgreSQL database, through the store's own loader (``mailhost store import``'s):
    UIDs 1..n, half of them \\Seen."""
    import io

    from mailhost.store.postgresql.load import PostgresLoader

    loader = PostgresLoader(dsn, user)
    try:
        loader.folder("INBOX", int(time.time()), n + 1, 1, None, "")
        for uid, (_name, data, seen, date) in enumerate(bench_messages(n), 1):
            loader.message(uid, frozenset({"\\Seen"} if seen else ()), date, 1, io.BytesIO(data))
        loader.finish(["INBOX"])
    except BaseException:
        loader.abort()
        raise


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_big(port: int, user: str, password: str, rss_probe=None, cpu_probe=None) -> dict:
    """Cold and warm SELECT + ``UID FETCH 1:* (UID FLAGS)``: wall seconds and, with
    ``cpu_probe``, the server's CPU seconds (steadier than wall time on a shared
    machine)."""
    out = {}
    for label in ("cold", "warm"):
        c = imaplib.IMAP4("127.0.0.1", port, timeout=600)
        c.login(user, password)
        if rss_probe is not None:
            out[label + "_rss_after_login_mb"] = round(rss_probe() / 1024)
        cpu0 = cpu_probe() if cpu_probe is not None else 0.0
        t0 = time.monotonic()
        typ, data = c.select("INBOX")
        t1 = time.monotonic()
        cpu1 = cpu_probe() if cpu_probe is not None else 0.0
        assert typ == "OK", data
        c.send(b"X1 UID FETCH 1:* (UID FLAGS)\r\n")
        lines = 0
        while True:
            line = c.readline()
            if not line:
                raise RuntimeError("connection closed")
            if line.startswith(b"X1 "):
                break
            lines += 1
        t2 = time.monotonic()
        cpu2 = cpu_probe() if cpu_probe is not None else 0.0
        if rss_probe is not None:
            out[label + "_rss_after_fetch_mb"] = round(rss_probe() / 1024)
        c.shutdown()
        out[label] = {"exists": int(data[0]), "select_s": round(t1 - t0, 3),
                      "fetch_s": round(t2 - t1, 3), "fetch_lines": lines}
        if cpu_probe is not None:
            out[label]["select_cpu_s"] = round(cpu1 - cpu0, 2)
            out[label]["fetch_cpu_s"] = round(cpu2 - cpu1, 2)
    return out


def _code(lines: list[bytes], code: bytes) -> int:
    for line in lines:
        if b"[" + code + b" " in line:
            return int(line.split(b"[" + code + b" ", 1)[1].split(b"]", 1)[0])
    raise RuntimeError(f"no {code!r} in {lines[-5:]!r}")


def _command(c: imaplib.IMAP4, tag: bytes, line: bytes) -> list[bytes]:
    """Send a raw command; every response line up to its tagged reply."""
    c.send(tag + b" " + line + b"\r\n")
    out = []
    while True:
        resp = c.readline()
        if not resp:
            raise RuntimeError("connection closed")
        out.append(resp)
        if resp.startswith(tag + b" "):
            if not resp.startswith(tag + b" OK"):
                raise RuntimeError(resp)
            return out


def time_qresync(port: int, user: str, password: str, changes: int = 100,
                 cpu_probe=None) -> dict:
    """A QRESYNC client's reconnect after another session changed ``changes`` messages'
    flags: ``SELECT INBOX (QRESYNC (uidvalidity modseq))``."""
    c = imaplib.IMAP4("127.0.0.1", port, timeout=600)
    c.login(user, password)
    _command(c, b"E1", b"ENABLE QRESYNC")
    lines = _command(c, b"S1", b"SELECT INBOX")
    validity, modseq = _code(lines, b"UIDVALIDITY"), _code(lines, b"HIGHESTMODSEQ")
    exists = next(int(x.split()[1]) for x in lines if x.endswith(b" EXISTS\r\n"))
    c.logout()
    other = imaplib.IMAP4("127.0.0.1", port, timeout=600)
    other.login(user, password)
    other.select("INBOX")
    step = max(1, exists // changes)
    for i in range(changes):
        typ, _ = other.store(str(1 + (i * step) % exists), "+FLAGS", "(\\Flagged)")
        assert typ == "OK"
    other.logout()
    c = imaplib.IMAP4("127.0.0.1", port, timeout=600)
    c.login(user, password)
    _command(c, b"E1", b"ENABLE QRESYNC")
    cpu0 = cpu_probe() if cpu_probe is not None else 0.0
    t0 = time.monotonic()
    lines = _command(c, b"S2", b"SELECT INBOX (QRESYNC (%d %d))" % (validity, modseq))
    took = time.monotonic() - t0
    cpu1 = cpu_probe() if cpu_probe is not None else 0.0
    c.logout()
    out = {"select_s": round(took, 4),
           "fetch_lines": sum(1 for x in lines if b" FETCH " in x),
           "vanished_lines": sum(1 for x in lines if x.startswith(b"* VANISHED"))}
    if cpu_probe is not None:
        out["select_cpu_s"] = round(cpu1 - cpu0, 3)
    return out


SORT_COMMANDS = [
    ("search_subject_first", b"UID SEARCH SUBJECT \"bench 1234\""),
    ("search_subject_repeat", b"UID SEARCH SUBJECT \"bench 1234\""),
    ("sort_date_first", b"SORT (DATE) UTF-8 ALL"),
    ("sort_date_repeat", b"SORT (DATE) UTF-8 ALL"),
    ("sort_subject", b"SORT (SUBJECT) UTF-8 ALL"),
    ("thread_references", b"THREAD REFERENCES UTF-8 ALL"),
    ("thread_references_repeat", b"THREAD REFERENCES UTF-8 ALL"),
]


def time_sort(port: int, user: str, password: str, cpu_probe=None, hwm_probe=None) -> dict:
    """Step 3: each of SORT_COMMANDS in one session, in order (wall and CPU seconds,
    the size of the answer as a sanity check and, with ``hwm_probe``, the server's
    peak RSS so far: which step makes the peak)."""
    out: dict = {}
    c = imaplib.IMAP4("127.0.0.1", port, timeout=600)
    c.login(user, password)
    c.select("INBOX")
    for n, (label, command) in enumerate(SORT_COMMANDS):
        tag = b"S%d" % n
        cpu0 = cpu_probe() if cpu_probe is not None else 0.0
        t0 = time.monotonic()
        c.send(tag + b" " + command + b"\r\n")
        size = 0
        while True:
            line = c.readline()
            if not line:
                raise RuntimeError("connection closed")
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(line)
                break
            size += len(line)
        t1 = time.monotonic()
        out[label] = {"s": round(t1 - t0, 3), "bytes": size}
        if cpu_probe is not None:
            out[label]["cpu_s"] = round(cpu_probe() - cpu0, 2)
        if hwm_probe is not None:
            out[label]["peak_rss_mb"] = round(hwm_probe() / 1024)
    c.logout()
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid``, its reaped children and its live children: all of
    Dovecot (master, login, auth and imap processes) under the load."""
    def times(p: int) -> list[int]:
        with open(f"/proc/{p}/stat") as f:
            return [int(x) for x in f.read().rsplit(")", 1)[1].split()[11:15]]
    total = sum(times(pid))
    for child in os.listdir("/proc"):
        if not child.isdigit() or int(child) == pid:
            continue
        try:
            with open(f"/proc/{child}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                total += sum(times(int(child))[:2])
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def dovecot_imap_pids(master_pid: int) -> list[int]:
    """Dovecot's per-user imap processes (children of the master)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().split()
            if int(fields[3]) == master_pid and fields[1] == "(imap)":
                out.append(int(pid))
        except (OSError, IndexError, ValueError):
            continue
    return out


def dovecot_imap_cpu(master_pid: int) -> float:
    """CPU seconds of the imap process now serving (the newest one: one login at a
    time here)."""
    pids = dovecot_imap_pids(master_pid)
    try:
        return cpu_seconds(max(pids)) if pids else 0.0
    except OSError:
        return 0.0


def dovecot_imap_rss_kib(master_pid: int) -> int:
    """RSS of Dovecot's largest per-user imap process (children of the master)."""
    total = 0
    for pid in dovecot_imap_pids(master_pid):
        try:
            total = max(total, rss_kib(pid, "VmRSS"))
        except (OSError, LookupError):
            continue
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--skip-sort", action="store_true")
    ap.add_argument("--maildir-copy", metavar="DIR",
                    help="keep the generated large mailbox in DIR and reuse it next time "
                         "(generating 100k messages takes minutes)")
    ap.add_argument("--workers", type=int, default=0,
                    help="also load mailhost with server.workers = N (issue 18)")
    ap.add_argument("--rate", default="",
                    help="also run the load paced at these total commands/s (comma "
                         "separated), both servers at the same rates")
    ap.add_argument("--match-rate", action="store_true",
                    help="also run mailhost paced at the commands/s Dovecot reached")
    ap.add_argument("--one-client", action="store_true",
                    help="also run the load with one client on each server")
    ap.add_argument("--postgresql", action="store_true",
                    help="also run mailhost on the PostgreSQL store (a private durable "
                         "cluster, bench/bench_pg.py) in every step")
    opts = ap.parse_args()
    rates = [float(r) for r in opts.rate.split(",") if r]
    paced: dict = {}
    results: dict = {"clients": opts.clients, "duration": opts.duration,
                     "messages": opts.messages, "load_average_before": os.getloadavg()[0]}
    work = tempfile.mkdtemp(prefix="imap-bench-")
    cluster = None
    if opts.postgresql:
        from bench_pg import BenchCluster

        cluster = BenchCluster().start()
    try:
        if cluster is not None:
            postgresql_steps(cluster, work, opts, results)
        if not opts.skip_load:
            mh, inside = metered(os.path.join(work, "mh-load"))
            os.makedirs(mh.workdir)
            mh.start()
            try:
                results["load_mailhost"] = run_load(mh.ports["imap"], opts.clients, opts.duration,
                                                   lambda: cpu_seconds(mh.pid),
                                                   server_side=inside)
                results["load_mailhost"]["peak_rss_mb"] = round(rss_kib(mh.pid, "VmHWM") / 1024)
                for rate in rates:
                    paced.setdefault(rate, {})["mailhost"] = run_load(
                        mh.ports["imap"], opts.clients, opts.duration,
                        lambda: cpu_seconds(mh.pid), rate, inside)
                if opts.one_client:
                    results["one_client_mailhost"] = run_load(
                        mh.ports["imap"], 1, opts.duration, lambda: cpu_seconds(mh.pid),
                        server_side=inside)
            finally:
                mh.stop()
            empty = os.path.join(work, "dv-load-mail")
            generate_maildir(os.path.join(empty, "example.test", "alice"), 0)
            dv = Dovecot(empty, {USER: PASSWORD}).start()
            try:
                results["load_dovecot"] = run_load(dv.port, opts.clients, opts.duration,
                                                   lambda: tree_cpu_seconds(dv.proc.pid))
                if opts.one_client:
                    results["one_client_dovecot"] = run_load(
                        dv.port, 1, opts.duration, lambda: tree_cpu_seconds(dv.proc.pid))
                for rate in rates:
                    paced[rate]["dovecot"] = run_load(
                        dv.port, opts.clients, opts.duration,
                        lambda: tree_cpu_seconds(dv.proc.pid), rate)
                    paced[rate]["median_latency_ratio"] = round(
                        (paced[rate]["mailhost"]["median_latency_ms"] or 0)
                        / max(paced[rate]["dovecot"]["median_latency_ms"] or 0, 0.01), 2)
            finally:
                dv.stop()
            if paced:
                results["load_paced"] = paced
            if opts.match_rate:
                # mailhost at the commands/s Dovecot reached in its closed loop: the same
                # work rate, so the medians compare responsiveness, not saturation.
                rate = results["load_dovecot"]["commands_per_s"]
                mh, inside = metered(os.path.join(work, "mh-matched"))
                os.makedirs(mh.workdir)
                mh.start()
                try:
                    results["load_mailhost_at_dovecot_rate"] = run_load(
                        mh.ports["imap"], opts.clients, opts.duration,
                        lambda: cpu_seconds(mh.pid), rate, inside)
                finally:
                    mh.stop()
                results["median_latency_ratio_at_dovecot_rate"] = round(
                    (results["load_mailhost_at_dovecot_rate"]["median_latency_ms"] or 0)
                    / max(results["load_dovecot"]["median_latency_ms"] or 0, 0.01), 2)
            if opts.one_client:
                results["median_latency_ratio_one_client"] = round(
                    (results["one_client_mailhost"]["median_latency_ms"] or 0)
                    / max(results["one_client_dovecot"]["median_latency_ms"] or 0, 0.01), 2)
            results["throughput_ratio"] = round(
                results["load_mailhost"]["commands_per_s"]
                / max(results["load_dovecot"]["commands_per_s"], 0.1), 2)
            results["median_latency_ratio"] = round(
                (results["load_mailhost"]["median_latency_ms"] or 0)
                / max(results["load_dovecot"]["median_latency_ms"] or 0, 0.01), 2)
            if opts.workers:
                mh, inside = metered(os.path.join(work, "mh-workers"), opts.workers)
                os.makedirs(mh.workdir)
                mh.start()
                mh.wait_workers(opts.workers)
                try:
                    results["load_mailhost_workers"] = run_load(
                        mh.ports["imap"], opts.clients, opts.duration,
                        lambda: tree_cpu_seconds(mh.pid), server_side=inside)
                finally:
                    mh.stop()
                results["workers_throughput_ratio"] = round(
                    results["load_mailhost_workers"]["commands_per_s"]
                    / max(results["load_dovecot"]["commands_per_s"], 0.1), 2)
        if not opts.skip_big:
            mh = MailHostProcess(os.path.join(work, "mh-big"))
            os.makedirs(mh.workdir)
            mh.configure()
            t0 = time.monotonic()
            saved = opts.maildir_copy and os.path.join(opts.maildir_copy, str(opts.messages))
            if saved and os.path.isdir(saved):
                shutil.copytree(saved, mh.maildir(USER))
            else:
                generate_maildir(mh.maildir(USER), opts.messages)
                if saved:
                    shutil.copytree(mh.maildir(USER), saved + ".tmp")
                    os.rename(saved + ".tmp", saved)
            results["generate_s"] = round(time.monotonic() - t0, 1)
            # Dovecot gets its own copy before mailhost adds its index files.
            pristine = os.path.join(work, "big-pristine")
            shutil.copytree(os.path.join(mh.data_dir, "mail"), pristine)
            mh.start()
            try:
                results["big_mailhost"] = time_big(mh.ports["imap"], USER, PASSWORD,
                                                   lambda: rss_kib(mh.pid, "VmRSS"),
                                                   lambda: cpu_seconds(mh.pid))
                if not opts.skip_sort:
                    results["sort_mailhost"] = time_sort(mh.ports["imap"], USER, PASSWORD,
                                                         lambda: cpu_seconds(mh.pid),
                                                         lambda: rss_kib(mh.pid, "VmHWM"))
                results["big_mailhost"]["peak_rss_mb"] = round(rss_kib(mh.pid, "VmHWM") / 1024)
                results["qresync_mailhost"] = time_qresync(mh.ports["imap"], USER, PASSWORD,
                                                           cpu_probe=lambda: cpu_seconds(mh.pid))
                results["big_mailhost"]["peak_rss_mb_after_qresync"] = round(
                    rss_kib(mh.pid, "VmHWM") / 1024)
            finally:
                mh.stop()
            dv = Dovecot(pristine, {USER: PASSWORD}).start()
            try:
                results["big_dovecot"] = time_big(
                    dv.port, USER, PASSWORD, lambda: dovecot_imap_rss_kib(dv.proc.pid),
                    lambda: dovecot_imap_cpu(dv.proc.pid))
                if not opts.skip_sort:
                    results["sort_dovecot"] = time_sort(dv.port, USER, PASSWORD,
                                                        lambda: dovecot_imap_cpu(dv.proc.pid))
                results["qresync_dovecot"] = time_qresync(
                    dv.port, USER, PASSWORD, cpu_probe=lambda: dovecot_imap_cpu(dv.proc.pid))
            finally:
                dv.stop()
            results["qresync_select_time_ratio"] = round(
                results["qresync_mailhost"]["select_s"]
                / max(results["qresync_dovecot"]["select_s"], 0.0001), 2)
            for label in ("cold", "warm"):
                m, d = results["big_mailhost"][label], results["big_dovecot"][label]
                results[f"big_{label}_time_ratio"] = round(
                    (m["select_s"] + m["fetch_s"]) / max(d["select_s"] + d["fetch_s"], 0.001), 2)
            if not opts.skip_sort:
                results["sort_time_ratio"] = {
                    label: round(results["sort_mailhost"][label]["s"]
                                 / max(results["sort_dovecot"][label]["s"], 0.001), 2)
                    for label, _ in SORT_COMMANDS}
        if cluster is not None:
            ratios(results)
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
        results["load_average_after"] = os.getloadavg()[0]
        print(json.dumps(results, indent=2))  # what was measured, even if a step failed


def postgresql_steps(cluster, work: str, opts: argparse.Namespace, results: dict) -> None:
    """--postgresql: the steps on mailhost's PostgreSQL store (one node), before the
    Maildir and Dovecot ones of the same run. CPU figures here are mailhost's and the
    whole PostgreSQL cluster's, added (``*_cpu_*``) and the cluster's alone
    (``*_db_cpu_*`` where given)."""
    from bench_pg import reset_statements, top_statements

    def node(name: str, dsn: str) -> MailHostProcess:
        mh = MailHostProcess(os.path.join(work, name),
                             extra={"store": {"backend": "postgresql", "dsn": dsn}})
        os.makedirs(mh.workdir)
        mh.start()
        return mh

    if not opts.skip_load:
        dsn = cluster.database()
        mh = node("pg-load", dsn)
        try:
            db0 = cluster.cpu_seconds()
            load = run_load(mh.ports["imap"], opts.clients, opts.duration,
                            lambda: cpu_seconds(mh.pid) + cluster.cpu_seconds())
            load["db_cpu_ms_per_command"] = round(
                (cluster.cpu_seconds() - db0) * 1000 / max(load["commands"], 1), 3)
            load["peak_rss_mb"] = round(rss_kib(mh.pid, "VmHWM") / 1024)
            load["statements"] = top_statements(dsn, 10)
            results["load_mailhost_pg"] = load
        finally:
            mh.stop()
    if not opts.skip_big:
        dsn = cluster.database()
        t0 = time.monotonic()
        generate_postgresql(dsn, USER, opts.messages)
        results["generate_pg_s"] = round(time.monotonic() - t0, 1)
        mh = node("pg-big", dsn)
        reset_statements(dsn)

        def both() -> float:
            return cpu_seconds(mh.pid) + cluster.cpu_seconds()

        try:
            results["big_mailhost_pg"] = time_big(mh.ports["imap"], USER, PASSWORD,
                                                  lambda: rss_kib(mh.pid, "VmRSS"), both)
            if not opts.skip_sort:
                results["sort_mailhost_pg"] = time_sort(mh.ports["imap"], USER, PASSWORD, both)
            results["big_mailhost_pg"]["peak_rss_mb"] = round(rss_kib(mh.pid, "VmHWM") / 1024)
            results["qresync_mailhost_pg"] = time_qresync(mh.ports["imap"], USER, PASSWORD,
                                                          cpu_probe=both)
            results["big_mailhost_pg"]["statements"] = top_statements(dsn, 10)
        finally:
            mh.stop()


def ratios(results: dict) -> None:
    """PostgreSQL against Maildir and Dovecot, for whatever both measured."""
    out = {}
    for other in ("mailhost", "dovecot"):
        pg, them = results.get("load_mailhost_pg"), results.get(f"load_{other}")
        if pg and them:
            out[f"load_throughput_vs_{other}"] = round(
                pg["commands_per_s"] / max(them["commands_per_s"], 0.1), 2)
        pg, them = results.get("big_mailhost_pg"), results.get(f"big_{other}")
        if pg and them:
            for label in ("cold", "warm"):
                m, d = pg[label], them[label]
                out[f"big_{label}_time_vs_{other}"] = round(
                    (m["select_s"] + m["fetch_s"]) / max(d["select_s"] + d["fetch_s"], 0.001), 2)
    results["postgresql_ratios"] = out


if __name__ == "__main__":
    main()
