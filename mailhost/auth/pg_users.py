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
from twisted.internet import threads
from twisted.logger import Logger

from mailhost.auth.passwd import PasswdEntry, PasswdError, PasswdFile
from mailhost.db.notify import NotifyListener

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
        self._entries = read_users(dsn)
        self._listener: NotifyListener | None = None
        self._reloading = False
        self._again = False

    def entries(self) -> dict[str, PasswdEntry]:
        return self._entries

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
        self._entries = read_users(self.dsn)

    # -- hearing of changes -----------------------------------------------------------

    def _changed(self, payload: str | None) -> None:
        """A change (or, with None, a lost LISTEN connection): read the table again, in
        a thread, one read at a time."""
        if self._reloading:
            self._again = True
            return
        self._reloading = True
        self._again = False
        d = threads.deferToThread(read_users, self.dsn)

        def loaded(entries: dict[str, PasswdEntry]) -> None:
            self._entries = entries

        def done(_: Any) -> None:
            self._reloading = False
            if self._again:
                self._changed(None)

        d.addCallback(loaded)
        d.addErrback(lambda f: log.failure("reading the users table failed", f,
                                           event="pg_users_reload"))
        d.addBoth(done)

    def start_listening(self, reactor: Any) -> None:
        if self._listener is None:
            self._listener = NotifyListener(self.dsn, self._changed, reactor, channel=CHANNEL)
            self._listener.start()

    def stop_listening(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None


def make_users(dsn: str) -> PostgresUsers:
    """The users of ``dsn``; ConfigError (one line) if the database cannot be read."""
    from mailhost.config import ConfigError

    try:
        return PostgresUsers(dsn)
    except psycopg.errors.UndefinedTable:
        raise ConfigError("auth.dsn: the database has no users table; run "
                          "'mailhost db upgrade'") from None
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"auth.dsn: cannot read the users table: {first}") from None


def open_passwd(config: Any) -> PasswdFile:
    """The users of ``config``: the passwd file, or (``[auth] backend = "postgresql"``)
    the users table. The server and the ``mailhost user`` commands both ask here."""
    if config.auth.backend == "postgresql":
        return make_users(config.auth.dsn or config.store.dsn)
    return PasswdFile(config.data_path(config.auth.passwd_file))
