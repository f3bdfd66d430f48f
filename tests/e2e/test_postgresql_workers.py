"""``[queue] backend = "postgresql"`` with ``server.workers = 2`` (issue 19): every
worker writes to the shared queue and delivers from it, each a node of its own (its
own lease owner, claims with ``FOR UPDATE SKIP LOCKED``), and every message reaches
the scripted remote exactly once.
"""

from __future__ import annotations

import smtplib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg

from mailhost.db import migrations
from tests.e2e.test_postgresql_queue import CountingRemote, message
from tests.mailhost_process import free_port

WORKERS = 2
TOTAL = 200


def submit(port: int, numbers: range) -> None:
    for n in numbers:  # a connection per message: the kernel spreads them over workers
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
            s.sendmail("sender@a.test", ["rcpt@remote.test"], message("w", n))


def test_every_worker_queues_and_delivers_and_each_message_goes_once(mailhost_factory, pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        migrations.upgrade(conn)
    remote_port = free_port("127.0.0.3")
    remote = CountingRemote(("127.0.0.3", remote_port), hold_from="none")
    remote.delay = 0.05  # slow enough that rows wait in the queue, leased, for a while
    threading.Thread(target=remote.serve_forever, daemon=True).start()
    try:
        proc = mailhost_factory("w", extra={
            "server": {"workers": WORKERS},
            "queue": {"backend": "postgresql", "dsn": pg_dsn, "lease": 3.0, "poll": 0.5},
            "smtp": {"relay_networks": ["127.0.0.0/8"]},
            "outbound": {"smarthost": f"127.0.0.3:{remote_port}", "tls_policy": "none",
                         "retry_initial": 1.0, "max_per_domain": 2},
        }).start()
        pids = set(proc.wait_workers(WORKERS))
        owners: set[int] = set()
        with ThreadPoolExecutor(4) as pool:
            jobs = [pool.submit(submit, proc.ports["smtp"], range(i, TOTAL, 4)) for i in range(4)]
            deadline = time.monotonic() + 120
            while not all(job.done() for job in jobs) and time.monotonic() < deadline:
                owners |= lease_owner_pids(pg_dsn)
                time.sleep(0.05)
            for job in jobs:
                job.result(timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            owners |= lease_owner_pids(pg_dsn)
            with remote.lock:
                if len(remote.acked) >= TOTAL:
                    break
            time.sleep(0.1)
        with remote.lock:
            acked = dict(remote.acked)
        assert set(acked) == {f"w-{n}" for n in range(TOTAL)}, len(acked)
        assert [seq for seq, count in acked.items() if count != 1] == []
        # Both workers held (so delivered: only a lease's owner delivers) queued mail.
        assert owners == pids, (owners, pids)
        deadline = time.monotonic() + 10  # the last rows go just after their 250
        while queued(pg_dsn) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert queued(pg_dsn) == 0
        assert proc.log_since_start().count("outbound queue started") == WORKERS
    finally:
        remote.shutdown()
        remote.server_close()


def lease_owner_pids(dsn: str) -> set[int]:
    """The pids in the lease owners (``host:pid:random``) of the rows queued now."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT DISTINCT lease_owner FROM queue"
                            " WHERE lease_owner IS NOT NULL").fetchall()
    return {int(owner.split(":")[-2]) for (owner,) in rows}


def queued(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("SELECT count(*) FROM queue").fetchone()[0])
