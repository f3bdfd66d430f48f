"""The users of ``[auth] backend = "postgresql"``: the passwd file's entries as rows of
the ``users`` table, shared by every node.

``PostgresUsers`` is a ``PasswdFile`` (same ``entries``/``get``/``aliases_by_user``/
``save``), so the checker, the directory, quotas, the postmaster bootstrap and the
``mailhost user`` commands work on it unchanged. Lookups are synchronous (SMTP asks
for every recipient), so the node keeps every entry in memory: loaded when it is
made, and loaded again in a thread whenever the table's trigger sends
``NOTIFY mailhost_users`` (a ``mailhost user`` command on any machine, or psql),
then swapped in on the reactor thread. ``save`` is a blocking transaction: it is for
the admin command and the one-time postmaster bootstrap.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from twisted.logger import Logger

from mailhost.auth.passwd import PasswdEntry, PasswdError, PasswdFile
from mailhost.db.table_mirror import TableMirror, opened

log = Logger()

CHANNEL = "mailhost_users"


def read_users(dsn: str) -> dict[str, PasswdEntry]:
    """Every user row as a PasswdEntry; a row that would not be a valid passwd line is
    skipped with one log line, as the passwd file skips one."""
    entries: dict[str, PasswdEntry] = {}
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        rows = conn.execute("SELECT name, password_hash, extra FROM users ORDER BY name")
        for name, password_hash, extra in rows:
            entry = PasswdEntry(name, password_hash, {str(k): str(v) for k, v in extra.items()})
            try:
                entry.to_line()
            except PasswdError as e:
                log.warn("users table: {error}; row ignored", error=str(e),
                         event="passwd.bad_line")
                continue
            entries[entry.user] = entry
    return entries


class PostgresUsers(PasswdFile):
    """A ``PasswdFile`` whose lines are rows of the ``users`` table (see the module)."""

    def __init__(self, dsn: str) -> None:
        super().__init__("postgresql users table")
        self.dsn = dsn
        self._mirror = TableMirror(dsn, read_users, CHANNEL, "users")

    def entries(self) -> dict[str, PasswdEntry]:
        return self._mirror.value

    def save(self, entries: dict[str, PasswdEntry]) -> None:
        """Make the table hold exactly ``entries`` (one transaction; PasswdError, with
        nothing changed, if an entry would not read back)."""
        for entry in entries.values():
            entry.to_line()
        with psycopg.connect(self.dsn, connect_timeout=10) as conn:
            with conn.transaction():
                conn.execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
                conn.execute("DELETE FROM users WHERE NOT (name = ANY(%s))",
                             (sorted(entries),))
                for user, entry in sorted(entries.items()):
                    conn.execute(
                        "INSERT INTO users (name, password_hash, extra) VALUES (%s, %s, %s)"
                        " ON CONFLICT (name) DO UPDATE SET password_hash = EXCLUDED.password_hash,"
                        " extra = EXCLUDED.extra"
                        " WHERE (users.password_hash, users.extra)"
                        " IS DISTINCT FROM (EXCLUDED.password_hash, EXCLUDED.extra)",
                        (user, entry.password_hash, json.dumps(entry.extra)))
        self._mirror.reload_now()

    # -- hearing of changes -----------------------------------------------------------

    def start_listening(self, reactor: Any) -> None:
        self._mirror.start_listening(reactor)

    def stop_listening(self) -> None:
        self._mirror.stop_listening()


def make_users(dsn: str) -> PostgresUsers:
    """The users of ``dsn``; ConfigError (one line) if the database cannot be read."""
    return opened(PostgresUsers, dsn, "users")


def open_passwd(config: Any) -> PasswdFile:
    """The users of ``config``: the passwd file, or (``[auth] backend = "postgresql"``)
    the users table. The server and the ``mailhost user`` commands both ask here."""
    if config.auth.backend == "postgresql":
        return make_users(config.auth.dsn or config.store.dsn)
    return PasswdFile(config.data_path(config.auth.passwd_file))
