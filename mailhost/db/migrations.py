"""The schema, as numbered migrations, and the version check a node makes at start.

Each migration is one SQL script applied in one transaction with the new version
number, so a failed upgrade leaves the previous version whole. ``mailhost db
upgrade`` applies what is missing; a node refuses to start on a schema that is not
exactly the code's (older: run the upgrade; newer: this node's code is older than the
database, and writing to it could lose what the newer schema means).

The store's layout (version 1):

- ``accounts``; ``folders`` with UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ. Every write
  to a folder locks its row first (``SELECT … FOR UPDATE``), which numbers UIDs and
  mod-sequences atomically across every node and orders commits by mod-sequence, so a
  node that reads "everything above the modseq I know" never misses a change.
- ``messages``: UID, flags and keywords (one ``text[]``), INTERNALDATE, size, modseq,
  recent, and the content hash of the body.
- ``bodies`` and ``body_chunks``: each distinct message stored once per SHA-256,
  in chunks, so five copies cost one body and a 100 MB message streams chunk by chunk.
- ``expunged``: (folder, UID, modseq) for QRESYNC's VANISHED and for other nodes.
- ``body_cache``: ENVELOPE/BODYSTRUCTURE and the like, per body (they depend on the
  bytes alone), so a copy to another folder or user needs no second parse.
- ``subscriptions``.

Version 2: ``users`` for ``[auth] backend = "postgresql"``: the passwd file's lines as
rows (name, argon2 hash, the key=value fields such as ``aliases`` and ``quota`` as
jsonb); any change notifies ``mailhost_users`` (a statement trigger, so an edit made
with psql reaches every node too).

Version 4: the outbound queue for ``[queue] backend = "postgresql"``
(``outbound/pg_queue.py``): ``queue`` holds each message's envelope (the spool's
JSON), when it is next due, and its lease (owner and expiry, epoch seconds of the
database's clock); ``queue_chunks`` its bytes in chunks as the store's bodies (not
deduplicated: a queued message is deleted once delivered); ``queue_requests`` the
``mailhost queue`` commands every running node picks up.

Version 6: ``aliases`` for ``[auth] backend = "postgresql"``: the aliases file's lists
and catch-alls as (name, target) rows, managed by ``mailhost alias``; any change
notifies ``mailhost_aliases``.
"""

from __future__ import annotations

from typing import Any

import psycopg


def _notify_on_change(table: str) -> str:
    """SQL: any change to ``table`` notifies ``mailhost_<table>`` (a statement trigger,
    so an edit made with psql reaches every node too)."""
    return f"""CREATE FUNCTION mailhost_{table}_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mailhost_{table}', '');
    RETURN NULL;
END $$;
CREATE TRIGGER {table}_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION mailhost_{table}_changed();
"""


MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE accounts (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE
);
DO $$ BEGIN
    EXECUTE format('CREATE SEQUENCE uid_validity_seq START %s',
                   extract(epoch FROM now())::bigint);
END $$;
CREATE TABLE folders (
    id bigserial PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    name text NOT NULL,
    uid_validity bigint NOT NULL DEFAULT nextval('uid_validity_seq'),
    uid_next bigint NOT NULL DEFAULT 1,
    highest_modseq bigint NOT NULL DEFAULT 1,
    special_use text,
    UNIQUE (account_id, name)
);
CREATE TABLE subscriptions (
    account_id bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    name text NOT NULL,
    PRIMARY KEY (account_id, name)
);
CREATE TABLE bodies (
    hash bytea PRIMARY KEY,
    size bigint NOT NULL,
    chunk_size integer NOT NULL
);
CREATE TABLE body_chunks (
    hash bytea NOT NULL REFERENCES bodies ON DELETE CASCADE,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (hash, seq)
);
CREATE TABLE messages (
    folder_id bigint NOT NULL REFERENCES folders ON DELETE CASCADE,
    uid bigint NOT NULL,
    body bytea NOT NULL REFERENCES bodies (hash),
    size bigint NOT NULL,
    flags text[] NOT NULL DEFAULT '{}',
    internal_date double precision NOT NULL,
    recent boolean NOT NULL DEFAULT true,
    modseq bigint NOT NULL,
    PRIMARY KEY (folder_id, uid)
);
CREATE INDEX messages_modseq ON messages (folder_id, modseq);
CREATE INDEX messages_body ON messages (body);
CREATE TABLE expunged (
    folder_id bigint NOT NULL REFERENCES folders ON DELETE CASCADE,
    uid bigint NOT NULL,
    modseq bigint NOT NULL,
    PRIMARY KEY (folder_id, uid)
);
CREATE INDEX expunged_modseq ON expunged (folder_id, modseq);
CREATE TABLE body_cache (
    hash bytea NOT NULL REFERENCES bodies ON DELETE CASCADE,
    key text NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (hash, key)
);
"""),
    (2, """
CREATE TABLE users (
    name text PRIMARY KEY,
    password_hash text NOT NULL,
    extra jsonb NOT NULL DEFAULT '{}'
);
""" + _notify_on_change("users")),
    # RFC 8474 MAILBOXID (32 hex digits, as Dovecot's mailbox GUIDs; RENAME keeps the
    # row, so the id), EMAILID (M and 24 hex digits; COPY and MOVE carry it over) and
    # RFC 8514 save dates (an insert is a save: append, delivery, COPY, MOVE).
    (3, """
ALTER TABLE folders ADD COLUMN mailbox_id text NOT NULL
    DEFAULT replace(gen_random_uuid()::text, '-', '');
ALTER TABLE messages ADD COLUMN saved double precision NOT NULL
    DEFAULT extract(epoch FROM clock_timestamp());
ALTER TABLE messages ADD COLUMN email_id text NOT NULL
    DEFAULT 'M' || substr(replace(gen_random_uuid()::text, '-', ''), 1, 24);
"""),
    (4, """
CREATE TABLE queue (
    id text PRIMARY KEY,
    envelope text NOT NULL,
    next_due double precision NOT NULL,
    lease_owner text,
    lease_until double precision NOT NULL
);
CREATE INDEX queue_due ON queue (next_due);
CREATE INDEX queue_owner ON queue (lease_owner);
CREATE TABLE queue_chunks (
    id text NOT NULL REFERENCES queue ON DELETE CASCADE,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (id, seq)
);
CREATE TABLE queue_requests (
    seq bigserial PRIMARY KEY,
    action text NOT NULL,
    qid text,
    made double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp())
);
"""),
    # Quota (issue 19): each account's usage, kept by triggers on messages, so every
    # path that adds or removes a message (delivery, APPEND, COPY, MOVE, EXPUNGE, a
    # folder's delete, an import, an edit in psql) counts, in its own transaction.
    (5, """
ALTER TABLE accounts ADD COLUMN storage bigint NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN messages bigint NOT NULL DEFAULT 0;
UPDATE accounts a SET storage = u.storage, messages = u.messages
    FROM (SELECT f.account_id, sum(m.size) AS storage, count(*) AS messages
          FROM messages m JOIN folders f ON f.id = m.folder_id GROUP BY f.account_id) u
    WHERE a.id = u.account_id;
CREATE FUNCTION mailhost_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE accounts SET storage = storage + NEW.size, messages = messages + 1
            WHERE id = (SELECT account_id FROM folders WHERE id = NEW.folder_id);
    ELSE
        UPDATE accounts SET storage = storage - OLD.size, messages = messages - 1
            WHERE id = (SELECT account_id FROM folders WHERE id = OLD.folder_id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER messages_usage AFTER INSERT OR DELETE ON messages
    FOR EACH ROW EXECUTE FUNCTION mailhost_usage();
"""),
    # The aliases file as rows (issue 19), for [auth] backend = "postgresql": one row
    # per (name, target); a name "@domain" is that domain's catch-all. Any change
    # notifies mailhost_aliases, as the users table does.
    (6, """
CREATE TABLE aliases (
    name text NOT NULL,
    target text NOT NULL,
    added timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (name, target)
);
""" + _notify_on_change("aliases")),
]

#: The schema version this code reads and writes.
CURRENT = MIGRATIONS[-1][0]


class SchemaMismatch(Exception):
    """The database's schema is not the one this code speaks (one line, for the log)."""


def version_of(conn: psycopg.Connection[Any]) -> int:
    """The schema version of the database (0: never upgraded)."""
    row = conn.execute("SELECT to_regclass('mailhost_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    got = conn.execute("SELECT max(version) FROM mailhost_schema").fetchone()
    return int(got[0]) if got and got[0] is not None else 0


def upgrade(conn: psycopg.Connection[Any]) -> list[int]:
    """Apply every missing migration, each in its own transaction; the versions applied.
    Two upgrades at once are serialized by an advisory lock."""
    applied: list[int] = []
    if not conn.autocommit:
        conn.rollback()  # nothing of ours is pending: leave whatever read was open
    conn.autocommit = True
    conn.execute("SELECT pg_advisory_lock(7419001)")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS mailhost_schema ("
                     " version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())")
        have = version_of(conn)
        if have > CURRENT:
            raise SchemaMismatch(f"database schema version {have} is newer than this mailhost "
                                 f"({CURRENT}); upgrade mailhost")
        for version, sql in MIGRATIONS:
            if version <= have:
                continue
            with conn.transaction():
                conn.execute(sql)
                conn.execute("INSERT INTO mailhost_schema (version) VALUES (%s)", (version,))
            applied.append(version)
    finally:
        conn.execute("SELECT pg_advisory_unlock(7419001)")
    return applied


def require_current(dsn: str, key: str) -> None:
    """Refuse to start (ConfigError, one line naming the setting ``key``) on a database
    that is unreachable or whose schema is not this code's. One short blocking
    connection: this runs while the service is built, before anything listens."""
    from mailhost.config import ConfigError
    from mailhost.db.database import error_line

    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            check(conn)
    except SchemaMismatch as e:
        raise ConfigError(f"{key}: {e}") from None
    except psycopg.Error as e:
        raise ConfigError(f"{key}: cannot reach the database: {error_line(e)}") from None


def check(conn: psycopg.Connection[Any]) -> None:
    """Refuse (SchemaMismatch, one line) a schema that is not exactly this code's."""
    have = version_of(conn)
    if have == CURRENT:
        return
    if have == 0:
        raise SchemaMismatch("the database has no mailhost schema; run 'mailhost db upgrade'")
    if have < CURRENT:
        raise SchemaMismatch(f"database schema version {have} is older than this mailhost's "
                             f"({CURRENT}); run 'mailhost db upgrade'")
    raise SchemaMismatch(f"database schema version {have} is newer than this mailhost's "
                         f"({CURRENT}); upgrade mailhost on this node")
