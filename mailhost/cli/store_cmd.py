"""``mailhost store export|import``: move accounts between Maildir and PostgreSQL.

``export`` copies accounts out of the configured store (``[store] backend``) into a
Maildir root (``--to-maildir``) or a database (``--to-dsn``); ``import`` copies them
from one (``--from-maildir``/``--from-dsn``) into the configured store. UIDVALIDITY,
UIDs, UIDNEXT, flags and keywords, INTERNALDATEs, MAILBOXIDs, special-use and
subscriptions are kept (``mailhost.store.transfer``), so no client resyncs. An
account that exists at the destination is refused, never merged. Run it with the
nodes that serve these accounts stopped (or the accounts otherwise quiet): a change
made during the copy may be left behind.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mailhost.config import Config, ConfigError, store_modes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store", help="copy accounts between Maildir and PostgreSQL, UIDs kept")
    ssub = p.add_subparsers(dest="store_command", required=True)
    exp = ssub.add_parser("export", help="copy accounts out of the configured store")
    dest = exp.add_mutually_exclusive_group(required=True)
    dest.add_argument("--to-maildir", metavar="DIR", help="into a Maildir root")
    dest.add_argument("--to-dsn", metavar="DSN", help="into a PostgreSQL database")
    imp = ssub.add_parser("import", help="copy accounts into the configured store")
    src = imp.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-maildir", metavar="DIR", help="from a Maildir root")
    src.add_argument("--from-dsn", metavar="DSN", help="from a PostgreSQL database")
    for q in (exp, imp):
        q.add_argument("users", nargs="*", metavar="USER", help="accounts to copy")
        q.add_argument("--all", action="store_true", help="every account of the source")
        q.set_defaults(func=cmd_transfer)


def _maildir(config: Config, root: str) -> dict[str, Any]:
    from mailhost.store.modes import FileModes

    file_mode, dir_mode, group = store_modes(config.store)
    return {"kind": "maildir", "root": root, "fsync": config.store.fsync,
            "modes": FileModes(file_mode, dir_mode, group)}


def _ends(args: argparse.Namespace, config: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    if config.store.backend == "postgresql":
        if not config.store.dsn:
            raise ConfigError("store.dsn: no database given")
        here: dict[str, Any] = {"kind": "postgresql", "dsn": config.store.dsn}
    elif config.store.backend == "maildir":
        here = _maildir(config, config.data_path(config.store.path))
    else:
        raise ConfigError("store.backend: export/import needs maildir or postgresql")
    if args.store_command == "export":
        there = ({"kind": "postgresql", "dsn": args.to_dsn} if args.to_dsn
                 else _maildir(config, args.to_maildir))
        return here, there
    there = ({"kind": "postgresql", "dsn": args.from_dsn} if args.from_dsn
             else _maildir(config, args.from_maildir))
    return there, here


def cmd_transfer(args: argparse.Namespace, config: Config) -> int:
    from twisted.internet import task

    source, dest = _ends(args, config)
    if source == dest:
        raise ConfigError("the source and the destination are the same store")
    if not args.users and not args.all:
        print("mailhost: name the accounts to copy, or --all", file=sys.stderr)
        return 2
    result: list[int] = []

    async def main(reactor: Any) -> None:
        result.append(await _transfer(reactor, source, dest, args.users, args.all))

    try:
        task.react(lambda reactor: _as_deferred(main(reactor)))
    except SystemExit as e:
        if e.code:
            return int(e.code) if isinstance(e.code, int) else 1
    return result[0] if result else 1


def _as_deferred(coro: Any) -> Any:
    from twisted.internet import defer

    return defer.Deferred.fromCoroutine(coro)


async def _transfer(reactor: Any, source: dict[str, Any], dest: dict[str, Any],
                    users: list[str], every: bool) -> int:
    from twisted.internet import threads

    from mailhost.store.interfaces import StoreError
    from mailhost.store.transfer import copy_account

    if source["kind"] == "postgresql":
        from mailhost.store.postgresql.startup import open_store

        store: Any = open_store(source["dsn"])
    else:
        from mailhost.store.maildir import MaildirStore

        store = MaildirStore(source["root"], fsync=source["fsync"], modes=source["modes"],
                             watch="poll")
    await store.start()

    def run(fn: Any, *a: Any) -> Any:
        return threads.deferToThread(fn, *a)

    failed = 0
    try:
        names = sorted(await store.accounts()) if every else [u.lower() for u in users]
        for user in names:
            try:
                loader = await run(_loader, dest, user)
                done = await copy_account(store, user, loader, run)
            except (StoreError, OSError) as e:
                print(f"{user}: not copied: {e}", file=sys.stderr)
                failed += 1
                continue
            except Exception as e:  # psycopg's errors: one line, go on with the next
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                print(f"{user}: not copied: {first}", file=sys.stderr)
                failed += 1
                continue
            print(f"{user}: {done.folders} folders, {done.messages} messages")
    finally:
        await store.close()
    return 1 if failed else 0


def _loader(dest: dict[str, Any], user: str) -> Any:
    if dest["kind"] == "postgresql":
        from mailhost.store.postgresql.load import PostgresLoader

        return PostgresLoader(dest["dsn"], user)
    from mailhost.store.maildir import account_loader

    return account_loader(dest["root"], user, fsync=dest["fsync"], modes=dest["modes"])
