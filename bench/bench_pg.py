"""A private, durable PostgreSQL cluster for the benchmarks (issue 19's "Measure").

The tests' cluster (``tests/pg_cluster.py``) runs with ``fsync=off`` and
``synchronous_commit=off``: right for tests, wrong for a benchmark set beside the
Maildir store, which fsyncs every message before its 250. This one keeps
PostgreSQL's durable defaults (``fsync``, ``synchronous_commit``,
``full_page_writes``), so a committed delivery is on disk as a Maildir one is
(``--pg-nofsync`` in the scripts turns them off to show what the disk costs).
Everything else is the tests' cluster: initdb in a temporary directory, a loopback
port, as the ``postgres`` user when run as root, torn down at the end.

``pg_stat_statements`` is preloaded, so a run can say which statements the time
went to (``top_statements``), and ``cpu_seconds`` is the CPU of the whole cluster
(postmaster, backends, background workers, and the backends that have exited),
reported beside the mail host's own.

Imports: ``psycopg`` (the ``postgresql`` extra of setup.cfg) and the tests' cluster.
"""

from __future__ import annotations

import os
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.pg_cluster import PgCluster  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchCluster(PgCluster):
    """A PgCluster with PostgreSQL's durable defaults (unless ``durable=False``) and
    pg_stat_statements."""

    def __init__(self, durable: bool = True) -> None:
        super().__init__()
        self.durable = durable

    def start(self) -> BenchCluster:
        r = self._run("initdb", "-D", self.data, "-U", "mailhost", "--auth=trust", "-E", "UTF8",
                      "--locale=C", "--no-sync")
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr.strip()}")
        durability = "" if self.durable else (
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        for _ in range(5):
            self.port = _free_port()
            opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
                    " -c max_connections=200 -c shared_preload_libraries=pg_stat_statements"
                    " -c pg_stat_statements.track=all" + durability)
            r = self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", opts, "-w",
                          "-t", "60", "start")
            if r.returncode == 0:
                return self
        raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()}")

    def database(self) -> str:
        """A new database with the current mailhost schema and pg_stat_statements; its DSN."""
        import psycopg

        from mailhost.db import migrations

        dsn = self.new_database()
        with psycopg.connect(dsn) as conn:
            migrations.upgrade(conn)
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        return dsn

    def postmaster_pid(self) -> int:
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            return int(f.readline())

    def cpu_seconds(self) -> float:
        """CPU (user+system) of the whole cluster so far: the postmaster with its reaped
        children's times, and every live child (backends, walwriter, checkpointer...)."""
        master = self.postmaster_pid()
        with open(f"/proc/{master}/stat") as f:
            total = sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:15])
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reset_statements(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


def top_statements(dsn: str, limit: int = 12) -> list[dict[str, Any]]:
    """The statements of this database that took the most time since the last reset:
    calls, total and mean milliseconds, and the text (first 120 characters)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT calls, total_exec_time, mean_exec_time, query FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " ORDER BY total_exec_time DESC LIMIT %s", (limit,)).fetchall()
    return [{"calls": int(c), "total_ms": round(t, 1), "mean_ms": round(m, 3),
             "query": " ".join(q.split())[:120]} for c, t, m, q in rows]


def database_sizes(dsn: str) -> dict[str, Any]:
    """pg_database_size and each mailhost table's total size (heap, TOAST, indexes)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # settles the free-space and visibility maps
        total = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        tables = conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid),"
            " COALESCE(pg_total_relation_size(c.reltoastrelid), 0), pg_indexes_size(c.oid)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'r'"
            " ORDER BY pg_total_relation_size(c.oid) DESC").fetchall()
    assert total is not None
    return {"database_bytes": int(total[0]),
            "tables": {name: {"total": int(t), "heap": int(h), "toast": int(x), "indexes": int(i)}
                       for name, t, h, x, i in tables if t > 8192 * 4}}
