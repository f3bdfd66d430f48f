"""The private PostgreSQL cluster fixture itself: up on loopback, never as root."""

from __future__ import annotations

import psycopg


def test_cluster_answers_on_loopback_as_unprivileged_user(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        addr, owner_is_super = conn.execute(
            "SELECT inet_server_addr()::text, rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        # Read while connected: the backend process ends with the connection.
        with open(f"/proc/{conn.info.backend_pid}/status") as f:
            uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
    assert addr == "127.0.0.1/32" or addr == "127.0.0.1"
    assert owner_is_super
    assert uid != 0


def test_each_test_gets_its_own_database(pg_cluster):
    a, b = pg_cluster.new_database(), pg_cluster.new_database()
    assert a != b
    with psycopg.connect(a) as conn:
        conn.execute("CREATE TABLE t (x int)")
    with psycopg.connect(b) as conn:
        assert conn.execute("SELECT to_regclass('t')").fetchone()[0] is None
