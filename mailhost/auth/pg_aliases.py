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

from mailhost.auth.passwd import normalize_address
from mailhost.db.table_mirror import TableMirror, opened

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
        self._mirror = TableMirror(dsn, read_aliases, CHANNEL, "aliases")

    def table(self) -> dict[str, list[str]]:
        return self._mirror.value

    # -- edits (the admin command) ----------------------------------------------------

    def add(self, name: str, targets: Iterable[str]) -> list[str]:
        """Add ``targets`` to ``name`` (those it has already stay once); its targets now."""
        name = normalize_address(name)
        with psycopg.connect(self.dsn, connect_timeout=10) as conn:
            with conn.transaction():
                for target in targets:
                    conn.execute("INSERT INTO aliases (name, target) VALUES (%s, %s)"
                                 " ON CONFLICT DO NOTHING", (name, normalize_address(target)))
        return self._mirror.reload_now().get(name, [])

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
        return self._mirror.reload_now().get(name, [])

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
        self._mirror.reload_now()

    # -- hearing of changes -----------------------------------------------------------

    def start_listening(self, reactor: Any) -> None:
        self._mirror.start_listening(reactor)

    def stop_listening(self) -> None:
        self._mirror.stop_listening()


def make_aliases(dsn: str) -> PostgresAliases:
    """The aliases of ``dsn``; ConfigError (one line) if the table cannot be read."""
    return opened(PostgresAliases, dsn, "aliases")
