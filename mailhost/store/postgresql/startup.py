"""Making the PostgreSQL store for the server: the schema is checked before anything
listens, so a node with the wrong schema stops with one line instead of serving."""

from __future__ import annotations

from mailhost.db import migrations
from mailhost.store.postgresql.store import PostgresStore


def open_store(dsn: str) -> PostgresStore:
    """A PostgresStore on ``dsn`` whose schema is this code's; ConfigError (one line,
    naming ``store.dsn``) when the database is unreachable or its schema differs
    (migrations.require_current: one short blocking connection, while the service is
    being built, before the reactor serves anything)."""
    migrations.require_current(dsn, "store.dsn")
    return PostgresStore(dsn)
