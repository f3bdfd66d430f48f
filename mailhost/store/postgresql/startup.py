"""Making the PostgreSQL store for the server: the schema is checked before anything
listens, so a node with the wrong schema stops with one line instead of serving."""

from __future__ import annotations

import psycopg

from mailhost.config import ConfigError
from mailhost.db import migrations
from mailhost.store.postgresql.store import PostgresStore


def open_store(dsn: str) -> PostgresStore:
    """A PostgresStore on ``dsn`` whose schema is this code's; ConfigError (one line,
    naming ``store.dsn``) when the database is unreachable or its schema differs.

    One short blocking connection: this runs while the service is being built, before
    the reactor serves anything."""
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            migrations.check(conn)
    except migrations.SchemaMismatch as e:
        raise ConfigError(f"store.dsn: {e}") from None
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"store.dsn: cannot reach the database: {first}") from None
    return PostgresStore(dsn)
