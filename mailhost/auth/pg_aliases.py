"""The aliases of ``[auth] backend = "postgresql"``: the aliases file's lists and
catch-alls as rows of the ``aliases`` table (schema 6), shared by every node.

Semantics are the file's (``aliases.py``), which are Postfix's ``virtual_alias_maps``:
``name -> targets``, targets expanded recursively, ``@domain`` a catch-all used only
when no user or alias matches. ``PostgresAliases.table`` answers as
``AliasesFile.table`` does (the same dict until something changes, so the
directory's cache holds), from memory: loaded when it is made and again, in a
thread, whenever the table's trigger sends ``NOTIFY mailhost_aliases`` (a ``mailhost
alias`` command on any machine, or psql). The edits (``add``, ``remove``,
``replace``) are blocking transactions for the admin command.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
from twisted.internet import threads
from twisted.logger import Logger

from mailhost.auth.passwd import normalize_address
from mailhost.db.notify import NotifyListener

log = Logger()

CHANNEL = "mailhost_aliases"


def read_aliases(dsn: str) -> dict[str, list[str]]:
    """Every alias, its targets in the order they were added."""
    table: dict[str, list[str]] = {}
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        for name, target in conn.execute(
                "SELECT name, target FROM aliases ORDER BY name, added, target"):
            table.setdefault(name, []).append(target)
    return table


class PostgresAliases:
    """The ``aliases`` table, kept in memory and current (see the module)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._table = read_aliases(dsn)
        self._listener: NotifyListener | None = None
        self._reloading = False
        self._again = False

    def table(self) -> dict[str, list[str]]:
        return self._table

    # -- edits (the admin command) ----------------------------------------------------

    def add(self, name: str, targets: Iterable[str]) -> list[str]:
        """Add ``targets`` to ``name`` (those it has already stay once); its targets now."""
        name = normalize_address(name)
        with psycopg.connect(self.dsn, connect_timeout=10) as conn:
            with conn.transaction():
                for target in targets:
                    conn.execute("INSERT INTO aliases (name, target) VALUES (%s, %s)"
                                 " ON CONFLICT DO NOTHING", (name, normalize_address(target)))
        self._table = read_aliases(self.dsn)
        return self._table.get(name, [])

    def remove(self, name: str, targets: Iterable[str] | None = None) -> list[str]:
        """Remove ``targets`` from ``name`` (None: the whole alias); its targets now."""
        name = normalize_address(name)
        with psycopg.connect(self.dsn, connect_timeout=10) as conn:
            with conn.transaction():
                if targets is None:
                    conn.execute("DELETE FROM aliases WHERE name = %s", (name,))
                else:
                    conn.execute("DELETE FROM aliases WHERE name = %s AND target = ANY(%s)",
                                 (name, [normalize_address(t) for t in targets]))
        self._table = read_aliases(self.dsn)
        return self._table.get(name, [])

    def replace(self, table: dict[str, list[str]]) -> None:
        """Make the table hold exactly ``table`` (``mailhost alias import``), in one
        transaction."""
        with psycopg.connect(self.dsn, connect_timeout=10) as conn:
            with conn.transaction():
                conn.execute("LOCK TABLE aliases IN SHARE ROW EXCLUSIVE MODE")
                conn.execute("DELETE FROM aliases")
                for name, targets in table.items():
                    for target in dict.fromkeys(targets):
                        conn.execute("INSERT INTO aliases (name, target) VALUES (%s, %s)",
                                     (name, target))
        self._table = read_aliases(self.dsn)

    # -- hearing of changes -----------------------------------------------------------

    def _changed(self, payload: str | None) -> None:
        """A change (or, with None, a lost LISTEN connection): read the table again, in
        a thread, one read at a time."""
        if self._reloading:
            self._again = True
            return
        self._reloading = True
        self._again = False
        d = threads.deferToThread(read_aliases, self.dsn)

        def loaded(table: dict[str, list[str]]) -> None:
            self._table = table

        def done(_: Any) -> None:
            self._reloading = False
            if self._again:
                self._changed(None)

        d.addCallback(loaded)
        d.addErrback(lambda f: log.warn("reading the aliases table failed: {e}",
                                        e=f.getErrorMessage(), event="pg_aliases_reload"))
        d.addBoth(done)

    def start_listening(self, reactor: Any) -> None:
        if self._listener is None:
            self._listener = NotifyListener(self.dsn, self._changed, reactor, channel=CHANNEL)
            self._listener.start()

    def stop_listening(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None


def make_aliases(dsn: str) -> PostgresAliases:
    """The aliases of ``dsn``; ConfigError (one line) if the table cannot be read."""
    from mailhost.config import ConfigError

    try:
        return PostgresAliases(dsn)
    except psycopg.errors.UndefinedTable:
        raise ConfigError("auth.dsn: the database has no aliases table; run "
                          "'mailhost db upgrade'") from None
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"auth.dsn: cannot read the aliases table: {first}") from None
