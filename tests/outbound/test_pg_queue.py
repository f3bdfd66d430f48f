"""The PostgreSQL queue's claims and leases (``outbound/pg_queue.py``) on a real private
cluster: two ``PgSpoolFiles`` stand for two nodes on one database."""

from __future__ import annotations

import os
import time

import psycopg
import pytest
import pytest_twisted

from mailhost.db import migrations
from mailhost.db.database import Database
from mailhost.outbound.envelope import Envelope, RecipientState, new_queue_id
from mailhost.outbound.pg_queue import CHUNK_SIZE, PgSpoolFiles

BODY = b"Subject: queued\r\nX-Seq: 1\r\n\r\n" + b"x" * (CHUNK_SIZE + 1000) + b"\r\n"


@pytest.fixture
def nodes(pg_dsn, tmp_path):
    with psycopg.connect(pg_dsn) as conn:
        migrations.upgrade(conn)
    made = []
    for name in ("a", "b"):
        db = Database(pg_dsn, max_size=2)
        db.start()
        files = PgSpoolFiles(str(tmp_path / name), db, lease=2.0, node=f"node-{name}")
        files.ensure_sync()
        made.append(files)
    yield made
    for files in made:
        pytest_twisted.blockon(files.db.close())


def commit(files: PgSpoolFiles, due: float = 0.0) -> Envelope:
    env = Envelope(id=new_queue_id(), sender="s@a.test",
                   recipients=[RecipientState(address="r@remote.test", next_attempt=due)],
                   arrival=time.time(), size=len(BODY))
    tmp = os.path.join(files.tmp_dir, f"{env.id}.msg")
    files._commit_op(tmp, env, BODY)
    return env


def expire(dsn: str, owner: str, lease: float = 2.0) -> None:
    """End ``owner``'s leases, as its death would; and wait, if the cluster is younger
    than a lease, for the grace a lease gets after the database starts."""
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE queue SET lease_until = 0 WHERE lease_owner = %s", (owner,))
        up = conn.execute("SELECT extract(epoch FROM clock_timestamp()"
                          " - pg_postmaster_start_time())").fetchone()[0]
    time.sleep(max(0.0, lease - float(up) + 0.1))


def test_a_committed_message_is_its_node_s_until_the_lease_expires(nodes, pg_dsn):
    a, b = nodes
    env = commit(a)
    assert b.claim_sync(10) == []  # leased to A
    expire(pg_dsn, "node-a")
    claimed = b.claim_sync(10)
    assert [e.id for e in claimed] == [env.id]
    with open(b.message_path(env.id), "rb") as f:  # B's working copy, from the chunks
        assert f.read() == BODY
    assert a.claim_sync(10) == []  # B's now
    # A's renewal says the message was taken; B's keeps it.
    assert a.renew_sync([env.id]) == (set(), {env.id})
    assert b.renew_sync([env.id]) == ({env.id}, set())


def test_two_nodes_claiming_at_once_never_take_one_message_both(nodes, pg_dsn):
    a, b = nodes
    ids = {commit(a).id for _ in range(40)}
    expire(pg_dsn, "node-a")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda f: [e.id for e in f.claim_sync(30)], [a, b]))
    assert not set(got[0]) & set(got[1])
    assert set(got[0]) | set(got[1]) == ids


def test_a_message_not_due_is_not_claimed_and_its_row_follows_the_envelope(nodes, pg_dsn):
    a, b = nodes
    env = commit(a, due=time.time() + 3600)
    expire(pg_dsn, "node-a")
    assert b.claim_sync(10) == []
    env.recipients[0].next_attempt = 0.0  # `mailhost queue retry`
    a.save_envelope_sync(env)
    assert [e.id for e in b.claim_sync(10)] == [env.id]


def test_removal_deletes_row_chunks_and_working_copy(nodes, pg_dsn):
    a, _b = nodes
    env = commit(a)
    assert os.path.exists(a.message_path(env.id))
    assert a.headers_sync(env).startswith(b"Subject: queued\r\nX-Seq: 1\r\n")
    assert [e.id for _, e in a.iter_sync()] == [env.id]
    a.remove_sync(env.id)
    assert not os.path.exists(a.message_path(env.id))
    assert a.load_envelope_sync(env.id) is None
    assert a.renew_sync([env.id]) == (set(), set())  # deleted, not taken
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM queue_chunks").fetchone()[0] == 0


def test_a_clean_stop_hands_its_messages_over_at_once(nodes):
    a, b = nodes
    env = commit(a)
    assert a.release_all_sync() == 1
    assert [e.id for e in b.claim_sync(10)] == [env.id]


def test_requests_reach_a_running_node_once_and_not_a_later_one(nodes):
    a, b = nodes
    assert b.take_triggers_sync() == []  # the first look notes where requests are
    a.add_trigger_sync("retry", "X1")
    assert b.take_triggers_sync() == [{"action": "retry", "id": "X1"}]
    assert b.take_triggers_sync() == []
