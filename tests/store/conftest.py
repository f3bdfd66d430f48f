"""Fixtures: every contract test runs against every store: MemoryStore, MaildirStore,
PostgresStore (on a private cluster) and DictStore (written in the tests, from the
contract alone)."""

from __future__ import annotations

import pytest
from zope.interface import implementer

from mailhost.store.interfaces import IFolderListener
from mailhost.store.maildir import MaildirStore
from mailhost.store.memory import MemoryStore
from tests.store.dictstore import DictStore


@pytest.fixture(params=["memory", "maildir", "dict", "postgresql"])
def store(request, tmp_path):
    if request.param == "memory":
        yield MemoryStore()
    elif request.param == "dict":
        yield DictStore()
    elif request.param == "postgresql":
        yield from postgres_store(request.getfixturevalue("pg_dsn"))
    else:
        yield MaildirStore(str(tmp_path / "mail"), fsync=True)


def postgres_store(dsn):
    """A started PostgresStore on a fresh, upgraded database; closed after."""
    import psycopg
    import pytest_twisted

    from mailhost.db import migrations
    from mailhost.store.postgresql import PostgresStore

    with psycopg.connect(dsn) as conn:
        migrations.upgrade(conn)
    pg = PostgresStore(dsn, pool_size=4)
    pytest_twisted.blockon(pg.start())
    yield pg
    pytest_twisted.blockon(pg.close())


@implementer(IFolderListener)
class Recorder:
    """An IFolderListener that records every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def messages_added(self, folder, infos):
        self.events.append(("added", [i.uid for i in infos]))

    def flags_changed(self, folder, infos):
        self.events.append(("flags", {i.uid: set(i.flags) for i in infos}))

    def messages_expunged(self, folder, uids):
        self.events.append(("expunged", list(uids)))


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def hold_claims(request):
    """``release = await hold_claims(store, folder)`` keeps a ``claim_recent`` made
    from then on from finishing its own work until ``release()``: on Maildir its
    rename waits for the folder lock (as behind another session's STORE; white-box),
    on PostgreSQL its UPDATE waits for row locks another transaction holds. Memory
    and dict stores claim synchronously: nothing to hold."""
    releases = []

    async def hold(store, folder):
        if isinstance(store, MaildirStore):
            lock = folder._lock  # white-box: the folder's own lock
            await lock.acquire()
            release = lock.release
        elif type(store).__name__ == "PostgresStore":
            import psycopg

            conn = psycopg.connect(request.getfixturevalue("pg_dsn"))
            conn.execute("SELECT uid FROM messages WHERE folder_id = %s FOR UPDATE",
                         (folder.id,))

            def release():
                conn.rollback()
                conn.close()
        else:
            def release():
                pass
        done = []

        def once():
            if not done:
                done.append(True)
                release()

        releases.append(once)
        return once

    yield hold
    for release in releases:
        release()
