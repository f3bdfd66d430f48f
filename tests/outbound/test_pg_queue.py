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


def test_a_result_the_database_is_away_for_is_kept_and_written_before_anything_else(
        nodes, pg_dsn):
    """A delivery finished while the database was away: its removal waits in memory
    (the scheduler is told it is done), the message stays this node's (``in_hand``: a
    claim does not adopt it again), and the first renewal that reaches the database
    deletes the row; an update waits likewise and lands only on a row still ours."""
    from mailhost.outbound.envelope import PENDING

    a, b = nodes
    delivered, deferred = commit(a), commit(a)
    good = a.db
    a.db = Database("postgresql://nobody@127.0.0.1:1/none", max_size=1, timeout=0.5)
    a.db.start()
    try:
        a._remove_op(delivered.id)  # no exception: kept
        deferred.recipients[0].attempts = 1
        assert deferred.recipients[0].status == PENDING
        a.save_envelope_sync(deferred)
        assert a.unsaved() == 2 and a.in_hand() == {delivered.id, deferred.id}
        with pytest.raises(Exception, match="database unavailable"):
            a.renew_sync([deferred.id])
    finally:
        a.db._pool.close()  # (this test runs in the reactor's greenlet: no blockon)
        a.db._threads.stop()
        a.db = good
    assert a.renew_sync([deferred.id]) == ({deferred.id}, set())
    assert a.unsaved() == 0 and a.in_hand() == set()
    assert a.load_envelope_sync(delivered.id) is None
    assert a.load_envelope_sync(deferred.id).recipients[0].attempts == 1
    assert b.claim_sync(10) == []  # the deferred one: its lease was renewed


def test_results_kept_for_a_message_another_node_took_do_not_overwrite_its_row(nodes, pg_dsn):
    a, b = nodes
    env = commit(a)
    a._unsaved[env.id] = ('{"broken": "kept update"}', 0.0)  # as if kept while away
    expire(pg_dsn, "node-a")
    assert [e.id for e in b.claim_sync(10)] == [env.id]
    assert a.renew_sync([env.id]) == (set(), {env.id})  # taken; the update not applied
    assert b.load_envelope_sync(env.id).id == env.id


def test_a_lease_that_ran_out_while_the_database_was_down_is_still_its_owner_s(tmp_path):
    """Leases count database uptime: after a restart longer than the lease, another node
    may not claim the message until a lease after the database started, and the owner,
    back in time, renews it (a renewal needs only the row to be its own); a lease not
    renewed after that ends as any other."""
    from tests.pg_cluster import PgCluster

    cluster = PgCluster().start()
    try:
        dsn = cluster.new_database()
        with psycopg.connect(dsn) as conn:
            migrations.upgrade(conn)
        made = []

        def node(name: str) -> PgSpoolFiles:
            files = PgSpoolFiles(str(tmp_path / name), Database(dsn, max_size=1), lease=3.0,
                                 node=f"node-{name}")
            files.ensure_sync()
            files.db.start()
            made.append(files)
            return files

        a = node("a")
        env = commit(a)
        cluster.halt()
        time.sleep(3.5)  # longer than the lease
        cluster.resume()
        b = node("b")  # a node (re)connecting at once
        assert b.claim_sync(10) == []
        deadline = time.monotonic() + 20
        while True:  # A's pool reconnects in the background
            try:
                assert a.renew_sync([env.id]) == ({env.id}, set())
                break
            except Exception:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert b.claim_sync(10) == []
        time.sleep(3.3)  # A renews no more (as if it died now): the lease is over
        assert [e.id for e in b.claim_sync(10)] == [env.id]
    finally:
        for files in made:
            files.db._pool.close()  # (the reactor's greenlet: no blockon of close())
            files.db._threads.stop()
        cluster.stop()
