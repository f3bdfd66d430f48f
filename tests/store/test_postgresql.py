"""What the PostgreSQL store does beyond the contract: bodies stored once, UIDs that
two nodes never share, changes heard across nodes, and the versioned schema."""

from __future__ import annotations

import time

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, task

from mailhost.db import migrations
from mailhost.store.interfaces import DeliveryTarget
from mailhost.store.postgresql import PostgresStore
from tests.store.conftest import Recorder, postgres_store

A = "alice@example.test"
MSG = b"From: x@example.test\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def two_nodes(pg_dsn):
    """Two PostgresStores on one database, as two nodes have."""
    first = postgres_store(pg_dsn)
    a = next(first)
    b = PostgresStore(pg_dsn, pool_size=4)
    pytest_twisted.blockon(b.start())
    yield a, b
    pytest_twisted.blockon(b.close())
    next(first, None)


async def deliver(store, data=MSG, *targets):
    w = store.new_message()
    w.write(data)
    return await w.commit(list(targets) or [DeliveryTarget(A)])


def count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest_twisted.ensureDeferred
async def test_a_message_for_five_users_is_stored_once(store_pg):
    store, dsn = store_pg
    users = [f"u{i}@example.test" for i in range(5)]
    await deliver(store, MSG, *[DeliveryTarget(u) for u in users])
    account = await store.open_account(users[0])
    inbox = await account.open_folder("INBOX")
    await inbox.copy([1], await account.open_folder("Trash"))
    assert (count(dsn, "messages"), count(dsn, "bodies")) == (6, 1)


@pytest_twisted.ensureDeferred
async def test_bodies_go_with_their_last_message(store_pg):
    store, dsn = store_pg
    await deliver(store)
    inbox = await (await store.open_account(A)).open_folder("INBOX")
    await inbox.set_flags([1], ["\\Deleted"], "add")
    assert await inbox.expunge() == [1]
    assert (count(dsn, "messages"), count(dsn, "bodies"), count(dsn, "body_chunks")) == (0, 0, 0)


@pytest.fixture
def store_pg(pg_dsn):
    gen = postgres_store(pg_dsn)
    yield next(gen), pg_dsn
    next(gen, None)


@pytest_twisted.ensureDeferred
async def test_two_nodes_never_hand_out_the_same_uid(two_nodes):
    a, b = two_nodes
    results = await defer.gatherResults(
        [defer.Deferred.fromCoroutine(deliver(s, MSG + b"%d" % i))
         for i in range(20) for s in (a, b)])
    uids = sorted(r[0] for r in results)
    assert uids == list(range(1, 41))


@pytest_twisted.ensureDeferred
async def test_a_delivery_on_one_node_is_heard_on_the_other_within_a_second(two_nodes):
    from twisted.internet import reactor

    a, b = two_nodes
    assert await b.wait_listening()
    watched = await (await b.open_account(A)).open_folder("INBOX")
    heard = Recorder()
    watched.add_listener(heard)
    t0 = time.monotonic()
    await deliver(a)
    for _ in range(100):
        if heard.events:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    assert heard.events == [("added", [1])]
    assert time.monotonic() - t0 < 1.0
    # Flags and expunges likewise.
    mine = await (await a.open_account(A)).open_folder("INBOX")
    await mine.set_flags([1], ["\\Deleted"], "add")
    await mine.expunge()
    for _ in range(100):
        if heard.events[-1][0] == "expunged":
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    # B catches up per notification: when both commits are in before its catch-up, the
    # message is simply gone (no flags event for a row that no longer exists).
    assert heard.events[-1] == ("expunged", [1])
    assert heard.events[1:-1] in ([], [("flags", {1: {"\\Deleted"}})]), heard.events
    assert watched.messages() == [] and watched.highest_modseq == mine.highest_modseq


def test_upgrade_is_idempotent_and_check_refuses_other_versions(pg_cluster, monkeypatch):
    dsn = pg_cluster.new_database()
    with psycopg.connect(dsn) as conn:
        with pytest.raises(migrations.SchemaMismatch, match="no mailhost schema"):
            migrations.check(conn)
        assert migrations.upgrade(conn) == [v for v, _ in migrations.MIGRATIONS]
        assert migrations.upgrade(conn) == []
        migrations.check(conn)
        conn.execute("INSERT INTO mailhost_schema (version) VALUES (%s)",
                     (migrations.CURRENT + 1,))
        with pytest.raises(migrations.SchemaMismatch, match="newer than this mailhost's"):
            migrations.check(conn)
        with pytest.raises(migrations.SchemaMismatch, match="newer than this mailhost"):
            migrations.upgrade(conn)
        conn.execute("DELETE FROM mailhost_schema WHERE version > %s", (migrations.CURRENT,))
        monkeypatch.setattr(migrations, "CURRENT", migrations.CURRENT + 1)  # newer code
        with pytest.raises(migrations.SchemaMismatch, match="older than this mailhost's"):
            migrations.check(conn)


def test_mailhost_db_upgrade_command(pg_cluster, tmp_path, capsys):
    from mailhost.cli.main import main

    dsn = pg_cluster.new_database()
    conf = tmp_path / "mailhost.toml"
    conf.write_text(f'[server]\ndomains = ["example.test"]\n[store]\nbackend = "postgresql"\n'
                    f'dsn = "{dsn}"\n')
    assert main(["--config", str(conf), "db", "version"]) == 1
    assert main(["--config", str(conf), "db", "upgrade"]) == 0
    assert f"schema upgraded to version {migrations.CURRENT}" in capsys.readouterr().out
    assert main(["--config", str(conf), "db", "upgrade"]) == 0
    assert "schema is current" in capsys.readouterr().out
    assert main(["--config", str(conf), "db", "version"]) == 0


@pytest_twisted.ensureDeferred
async def test_service_resumes_by_itself_after_a_database_restart(two_nodes, pg_cluster):
    """Connections cut by a restart are replaced (the pool checks each one it hands
    out), and the LISTEN connection comes back and resynchronises open folders."""
    from twisted.internet import reactor

    a, b = two_nodes
    assert await b.wait_listening()
    watched = await (await b.open_account(A)).open_folder("INBOX")
    await deliver(a)
    await watched.refresh()
    pg_cluster.restart()
    for _ in range(50):  # the first tries may meet a connection cut by the restart
        try:
            await deliver(a)
            break
        except psycopg.OperationalError:
            await task.deferLater(reactor, 0.1, lambda: None)
    for _ in range(300):
        if len(watched.messages()) == 2:
            break
        await task.deferLater(reactor, 0.02, lambda: None)
    assert [i.uid for i in watched.messages()] == [1, 2]


@pytest_twisted.ensureDeferred
async def test_columns_are_built_once_per_change_and_follow_other_nodes(two_nodes):
    """IIndexedFolder on PostgreSQL: a second SELECT of an unchanged folder reuses the
    columns; a delivery on another node, a flag change and an expunge show in the next."""
    from twisted.internet import reactor

    from mailhost.store.interfaces import IIndexedFolder

    a, b = two_nodes
    assert await b.wait_listening()
    await deliver(a)
    await deliver(a)
    folder = await (await b.open_account(A)).open_folder("INBOX")
    assert IIndexedFolder.providedBy(folder)
    first = folder.columns()
    assert folder.columns() is first and list(first.uids) == [1, 2]
    await deliver(a)
    for _ in range(200):
        if list(folder.columns().uids) == [1, 2, 3]:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    assert list(folder.columns().uids) == [1, 2, 3]
    await folder.set_flags([2], ["\\Deleted"], "add")
    assert folder.columns().flags[1] == frozenset({"\\Deleted"})
    await folder.expunge()
    cols = folder.columns()
    assert (list(cols.uids), list(cols.sizes)) == ([1, 3], [len(MSG)] * 2)
    assert folder.columns() is cols


@pytest_twisted.ensureDeferred
async def test_concurrent_deliveries_into_one_folder_commit_together(store_pg):
    """Group commit (bench/smtp_ingest.py --store postgresql: one transaction per
    delivery made deliveries into one mailbox wait for each other's folder lock and
    WAL flush in turn): 30 concurrent deliveries take a few transactions (a few new
    mod-sequences, one per batch and folder), get distinct
    consecutive UIDs, and one to a folder that does not exist fails alone."""
    store, dsn = store_pg
    await deliver(store)  # the account exists
    with psycopg.connect(dsn) as conn:
        modseq0 = int(conn.execute("SELECT highest_modseq FROM folders f JOIN accounts a"
                                   " ON a.id = f.account_id WHERE a.name = %s"
                                   " AND f.name = 'INBOX'", (A,)).fetchone()[0])
    wanted = [defer.Deferred.fromCoroutine(deliver(store, MSG + b"%d" % i)) for i in range(30)]
    missing = defer.Deferred.fromCoroutine(deliver(store, MSG, DeliveryTarget(A, "Nowhere")))
    results = await defer.gatherResults(wanted)
    with pytest.raises(Exception, match="Nowhere"):
        await missing
    assert sorted(r[0] for r in results) == list(range(2, 32))
    inbox = await (await store.open_account(A)).open_folder("INBOX")
    assert [i.uid for i in inbox.messages()] == list(range(1, 32))
    with psycopg.connect(dsn) as conn:
        modseq1 = int(conn.execute("SELECT highest_modseq FROM folders WHERE id = %s",
                                   (inbox.id,)).fetchone()[0])
    # One new mod-sequence per batch: far fewer than one per delivery.
    assert modseq1 - modseq0 < 10, modseq1 - modseq0


@pytest_twisted.ensureDeferred
async def test_syncs_asked_while_one_waits_share_it(store_pg):
    """Every write and every NOTIFY asks its folder for a sync; under the IMAP load
    (bench/imap_load.py --postgresql) they queued one query each behind the other,
    and a NOOP waited behind them all. Asked while one runs, they now share the next."""
    from mailhost.store.postgresql import sql

    store, _dsn = store_pg
    await deliver(store)
    inbox = await (await store.open_account(A)).open_folder("INBOX")
    runs = []
    real = store.db.run_statement

    def counting(fn, *args):
        if fn is sql.sync:
            runs.append(args)
        return real(fn, *args)

    store.db.run_statement = counting
    try:
        await defer.gatherResults([inbox.sync() for _ in range(10)])
        # The one that started at once and one for the other nine (or one for all ten,
        # when the NOTIFY of the delivery above had a sync running already).
        assert 1 <= len(runs) <= 2, runs
        await deliver(store, MSG + b"again")
    finally:
        store.db.run_statement = real
    assert [i.uid for i in inbox.messages()] == [1, 2]


@pytest_twisted.ensureDeferred
async def test_an_import_writes_messages_in_batches_with_their_uids(store_pg):
    """``store import`` (PostgresLoader) writes a few hundred messages per round trip
    (a 100,000-message import took minutes of round trips, three per message): 1,201
    messages cross FLUSH_COUNT twice, with a body shared by two of them, and come back
    with their UIDs, flags and bytes."""
    import io

    from mailhost.store.postgresql.load import FLUSH_COUNT, PostgresLoader

    store, dsn = store_pg
    n = 2 * FLUSH_COUNT + 201
    loader = PostgresLoader(dsn, "imported@example.test")
    loader.folder("INBOX", 1234, n + 10, 1, None, "")
    for uid in range(1, n + 1):
        body = MSG + (b"%d" % uid if uid != n else b"1")  # the last one's body is the first's
        loader.message(uid * 2, frozenset({"\\Seen"} if uid % 3 else ()), 1e9 + uid, 1,
                       io.BytesIO(body))
    loader.finish(["INBOX"])
    inbox = await (await store.open_account("imported@example.test")).open_folder("INBOX")
    infos = inbox.messages()
    assert [i.uid for i in infos] == [2 * u for u in range(1, n + 1)]
    assert [("\\Seen" in i.flags) for i in infos] == [bool(u % 3) for u in range(1, n + 1)]
    assert inbox.uid_validity == 1234
    for uid, want in [(2, MSG + b"1"), (2 * FLUSH_COUNT + 2, MSG + b"%d" % (FLUSH_COUNT + 1)),
                      (2 * n, MSG + b"1")]:
        reader = await inbox.open_message(uid)
        assert reader.read() == want
        reader.close()
    assert count(dsn, "bodies") == n - 1  # the last message shares the first one's body


@pytest_twisted.ensureDeferred
async def test_a_committed_copy_whose_refresh_fails_is_still_answered(store_pg):
    """A COPY that committed must not fail because the folders' refresh right after it
    did (the database went away between the two): the client would retry and copy
    twice. Found by the database-restart load test's review (issue 19)."""
    from mailhost.store.interfaces import StoreUnavailable

    store, dsn = store_pg
    await deliver(store)
    account = await store.open_account(A)
    inbox = await account.open_folder("INBOX")
    trash = await account.open_folder("Trash")
    real_sync = type(inbox).sync
    type(inbox).sync = lambda self: defer.fail(StoreUnavailable("gone"))
    try:
        pairs = await inbox.copy([1], trash)
    finally:
        type(inbox).sync = real_sync
    assert pairs == [(1, 1)]
    assert count(dsn, "messages") == 2
    await trash.sync()
    assert [i.uid for i in trash.messages()] == [1]


def _counting_transactions(store):
    """Count the store's transactions (``Database.transact`` and ``statement``: every
    ``run`` and every body chunk a message file reads) until the returned callable
    restores them."""
    calls = []
    real = store.db.transact, store.db.statement

    def counting(real_fn):
        def count(fn, *args):
            calls.append(getattr(fn, "__name__", repr(fn)))
            return real_fn(fn, *args)
        return count

    store.db.transact, store.db.statement = counting(real[0]), counting(real[1])

    def restore():
        store.db.transact, store.db.statement = real

    return calls, restore


@pytest_twisted.ensureDeferred
async def test_header_blocks_of_many_messages_come_in_one_query(store_pg):
    """Regression (issue 19, the first SEARCH SUBJECT on 20k messages: 47 s, one query
    per message): ``read_headers`` reads the header blocks of many bodies in one query,
    only their header octets; a header longer than a body chunk, a message with no
    empty line and a body two messages share still come whole."""
    import io

    from zope.interface.verify import verifyObject

    from mailhost.store.interfaces import IHeaderBlocks
    from mailhost.store.postgresql.bodies import CHUNK_SIZE
    from mailhost.store.postgresql.load import PostgresLoader
    from mailhost.store.postgresql.store import HEADER_QUERY

    store, _dsn = store_pg
    messages = [b"Subject: m%d\r\nFrom: x@example.test\r\n\r\nbody %d\r\n" % (i, i)
                for i in range(HEADER_QUERY + 5)]
    long_header = b"Subject: long\r\nX-Pad: " + b"p" * (CHUNK_SIZE + 10) + b"\r\n\r\nafter\r\n"
    no_body = b"Subject: header only\r\nFrom: y@example.test\r\n"
    messages += [long_header, no_body, messages[0]]  # the last shares the first's body
    loader = PostgresLoader(_dsn, "many@example.test")
    loader.folder("INBOX", 77, len(messages) + 1, 1, None, "")
    for uid, data in enumerate(messages, 1):
        loader.message(uid, frozenset(), 1e9, 1, io.BytesIO(data))
    loader.finish(["INBOX"])
    inbox = await (await store.open_account("many@example.test")).open_folder("INBOX")
    assert verifyObject(IHeaderBlocks, inbox)
    uids = [i.uid for i in inbox.messages()]
    calls, restore = _counting_transactions(store)
    try:
        got = await inbox.read_headers(uids + [99_999], lambda f: f.read())
    finally:
        restore()
    assert [u for u, _ in got] == uids
    want = [data[:data.index(b"\r\n\r\n") + 4] if b"\r\n\r\n" in data else data
            for data in messages]
    # Only the header octets, but the long header's message is read whole.
    assert [block for _, block in got] == [*want[:-3], long_header, *want[-2:]]
    # Two queries for the 1,006 distinct bodies, and the long header's two chunks.
    assert calls.count("header_blocks") == 2, calls
    assert len(calls) == 4, calls


@pytest_twisted.ensureDeferred
async def test_cached_values_are_written_in_batches(store_pg):
    """Regression (issue 19): a SEARCH caches every message's header fields, which
    was one transaction each; values cached together go in one statement (or a few),
    and another node reads them all when it opens the folder."""
    from twisted.internet import reactor

    store, dsn = store_pg
    for i in range(300):
        await deliver(store, MSG + b"%d" % i)
    inbox = await (await store.open_account(A)).open_folder("INBOX")
    runs = []
    real = store.db.run

    def counting(fn, *args):
        if fn.__name__ == "set_cached":
            runs.append(len(args[0]))
        return real(fn, *args)

    store.db.run = counting
    try:
        for info in inbox.messages():
            inbox.set_cached(info.uid, "k", "v%d" % info.uid)
        inbox.set_cached(1, "k", "again")  # while written: the newest value wins
        deadline = time.monotonic() + 30
        while count(dsn, "body_cache") < 300 and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.05, lambda: None)
    finally:
        store.db.run = real
    assert sum(runs) == 301 and len(runs) <= 3, runs
    other = PostgresStore(dsn, pool_size=2)
    try:
        await other.start()
        there = await (await other.open_account(A)).open_folder("INBOX")
        assert there.get_cached(1, "k") == "again"
        assert there.get_cached(300, "k") == "v300"
    finally:
        await other.close()


@pytest_twisted.ensureDeferred
async def test_concurrent_stores_expunges_and_appends_share_transactions(store_pg):
    """Regression (bench/imap_load.py --postgresql: ten sessions' STOREs and EXPUNGEs on
    one folder took one transaction each, and each waited for the one before's folder
    lock and WAL flush: 12.6 ms mean in ``SELECT … FOR UPDATE``): writes asked while one
    commits go in one transaction with one folder lock, in the order they were asked
    (an EXPUNGE asked after a STORE of \\Deleted removes that message), each STORE or
    EXPUNGE that changes something with its own mod-sequence (RFC 7162 section 3.1),
    one that changes nothing with none."""
    from mailhost.store.postgresql import writes

    store, dsn = store_pg
    for i in range(15):
        await deliver(store, MSG + b"%d" % i)
    inbox = await (await store.open_account(A)).open_folder("INBOX")
    with psycopg.connect(dsn) as conn:
        modseq0 = int(conn.execute("SELECT highest_modseq FROM folders WHERE id = %s",
                                   (inbox.id,)).fetchone()[0])
    batches, locks = [], []
    real_run, real_lock = store.db.run, writes.lock_statement

    def counting(fn, *args):
        if fn is writes.write_batch:
            batches.append(len(args[0]))
        return real_run(fn, *args)

    def locking(conn, ids):
        locks.append(sorted(ids))
        return real_lock(conn, ids)

    store.db.run, writes.lock_statement = counting, locking
    try:
        asked = []
        for uid in range(1, 11):
            asked.append(inbox.set_flags([uid], ["\\Deleted"], "add"))
            asked.append(inbox.expunge([uid]))
        flagged = [inbox.set_flags([uid], ["\\Flagged"], "add") for uid in range(11, 16)]
        again = inbox.set_flags([11], ["\\Flagged"], "add")  # changes nothing
        appended = [defer.Deferred.fromCoroutine(deliver(store, MSG + b"new %d" % i))
                    for i in range(5)]
        results = await defer.gatherResults(asked + flagged + [again] + appended)
    finally:
        store.db.run, writes.lock_statement = real_run, real_lock
    # 31 writes: the first batch starts alone, the rest wait and go together.
    assert sum(batches) == 31 and len(batches) <= 3, batches
    assert len(locks) == len(batches) and all(ids == [inbox.id] for ids in locks), locks
    assert [results[i] for i in range(1, 20, 2)] == [[uid] for uid in range(1, 11)]
    assert sorted(r[0] for r in results[-5:]) == list(range(16, 21))
    assert [i.uid for i in inbox.messages()] == list(range(11, 21))
    store_modseqs = [r[0].modseq for r in results[20:25]]
    assert [r[0].flags for r in results[20:25]] == [frozenset({"\\Flagged"})] * 5
    with psycopg.connect(dsn) as conn:
        gone = dict(conn.execute("SELECT uid, modseq FROM expunged WHERE folder_id = %s",
                                 (inbox.id,)).fetchall())
        modseq1 = int(conn.execute("SELECT highest_modseq FROM folders WHERE id = %s",
                                   (inbox.id,)).fetchone()[0])
    assert sorted(gone) == list(range(1, 11))
    # Each change its own mod-sequence, in the order asked (STORE of 1, EXPUNGE of 1,
    # STORE of 2, ...; then the five \Flagged), whatever the batches; the no-op none;
    # the appends one per batch they went in.
    assert [gone[uid] for uid in range(1, 11)] == [modseq0 + 2 * k for k in range(1, 11)]
    assert store_modseqs == [modseq0 + 20 + k for k in range(1, 6)]
    assert 25 < modseq1 - modseq0 <= 25 + len(batches), (modseq0, modseq1)
    assert inbox.highest_modseq == modseq1


@pytest_twisted.ensureDeferred
async def test_an_open_folder_is_found_by_name_and_appended_to_without_a_lookup(two_nodes):
    """Every APPEND opened its folder (a lookup by name and a sync) before its write
    and its sync after (bench/imap_load.py --postgresql): a folder open on the node is
    now found by name without the lookup, and APPEND goes straight into the write
    batch. Renamed on another node and made again there under the same name, the
    name leads to the new folder, and APPENDUID carries its UIDVALIDITY."""
    a, b = two_nodes
    alice = await a.open_account(A)
    await alice.create_folder("Work")
    work = await alice.open_folder("Work")
    lookups = []
    real = a.db.run_statement

    def counting(fn, *args):
        lookups.append(fn.__name__)
        return real(fn, *args)

    a.db.run_statement = counting
    try:
        assert await alice.open_folder("Work") is work
        w = a.new_message()
        w.write(MSG)
        assert await alice.append("Work", w, ["\\Seen"]) == (work.uid_validity, 1)
    finally:
        a.db.run_statement = real
    # Syncs only: the open's, the write's (and one for the write's own NOTIFY).
    assert set(lookups) == {"sync"}, lookups
    assert [(i.uid, i.flags) for i in work.messages()] == [(1, frozenset({"\\Seen"}))]

    bob_side = await b.open_account(A)
    work.sync = lambda: defer.succeed(None)  # node A has not heard of what follows yet
    try:
        await bob_side.rename_folder("Work", "Play")
        await bob_side.create_folder("Work")
        again = await bob_side.open_folder("Work")
        w = a.new_message()
        w.write(MSG + b"2")
        assert work.name == "Work"
        assert await alice.append("Work", w) == (again.uid_validity, 1)
    finally:
        del work.sync
    assert again.uid_validity != work.uid_validity
    opened = await alice.open_folder("Work")
    assert opened is not work and opened.uid_validity == again.uid_validity
    assert [i.uid for i in opened.messages()] == [1]
    await work.sync()
    assert work.name == "Play" and [i.uid for i in work.messages()] == [1]
    with pytest.raises(Exception, match="Nowhere"):
        w = a.new_message()
        w.write(MSG)
        await alice.append("Nowhere", w)


@pytest_twisted.ensureDeferred
async def test_a_message_just_written_or_read_is_read_again_without_a_query(store_pg):
    """Regression (bench/imap_load.py --postgresql: 0.3 body queries per command, as a
    client FETCHes the header and ENVELOPE of what was just appended, and those read
    the same chunk twice): a small body's chunk is kept from its write and its first
    read (ChunkCache, bounded), so reading it again runs no query; a body not kept
    is read once, then kept."""
    from mailhost.store.postgresql.bodies import CACHE_ITEM
    from tests.store.test_contract import read_all

    store, _dsn = store_pg
    await deliver(store)
    big = MSG + b"x" * CACHE_ITEM  # too big to keep
    await deliver(store, big)
    inbox = await (await store.open_account(A)).open_folder("INBOX")
    other = PostgresStore(_dsn, pool_size=2)  # a node that wrote neither
    await other.start()
    try:
        there = await (await other.open_account(A)).open_folder("INBOX")
        calls, restore = _counting_transactions(store)
        theirs, restore_theirs = _counting_transactions(other)
        try:
            assert await read_all(inbox, 1) == MSG
            reader = await inbox.read_message(1, 5, 10)
            assert await reader.read() == MSG[5:15]
            reader.close()
            for _ in range(2):
                assert await read_all(there, 1) == MSG
            assert await read_all(inbox, 2) == big
        finally:
            restore()
            restore_theirs()
    finally:
        await other.close()
    assert calls == ["run"], calls  # only the big one's chunk
    assert theirs == ["run"], theirs  # read once, then kept
