"""``mailhost db upgrade|version``: the PostgreSQL schema of ``[store] dsn``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

from mailhost.config import Config, ConfigError

T = TypeVar("T")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="the PostgreSQL schema: upgrade it, or show its version")
    dsub = p.add_subparsers(dest="db_command", required=True)
    up = dsub.add_parser("upgrade", help="apply the missing schema migrations")
    up.add_argument("--dsn", help="the database (default: [store] dsn)")
    up.set_defaults(func=cmd_upgrade)
    ver = dsub.add_parser("version", help="print the schema version and this code's")
    ver.add_argument("--dsn", help="the database (default: [store] dsn)")
    ver.set_defaults(func=cmd_version)


def _dsn(args: argparse.Namespace, config: Config) -> str:
    dsn = args.dsn or config.store.dsn
    if not dsn:
        raise ConfigError("store.dsn: no database given (set [store] dsn or pass --dsn)")
    return str(dsn)


def _on_database(args: argparse.Namespace, config: Config, work: Callable[[Any], T]) -> T | None:
    """``work(connection)`` on the database; None once a failure is said in one line."""
    import psycopg

    from mailhost.db import migrations
    from mailhost.db.database import error_line

    try:
        with psycopg.connect(_dsn(args, config)) as conn:
            return work(conn)
    except migrations.SchemaMismatch as e:
        print(f"mailhost: {e}")
    except psycopg.Error as e:
        print(f"mailhost: database error: {error_line(e)}")
    return None


def cmd_upgrade(args: argparse.Namespace, config: Config) -> int:
    from mailhost.db import migrations

    applied = _on_database(args, config, migrations.upgrade)
    if applied is None:
        return 1
    if applied:
        print(f"schema upgraded to version {applied[-1]} (applied {', '.join(map(str, applied))})")
    else:
        print(f"schema is current (version {migrations.CURRENT})")
    return 0


def cmd_version(args: argparse.Namespace, config: Config) -> int:
    from mailhost.db import migrations

    have = _on_database(args, config, migrations.version_of)
    if have is None:
        return 1
    print(f"database schema {have}, mailhost schema {migrations.CURRENT}")
    return 0 if have == migrations.CURRENT else 1
