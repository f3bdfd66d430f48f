"""``mailhost alias list|add|del|import``: the aliases (lists and catch-alls), in the
aliases file or, with ``[auth] backend = "postgresql"``, in the ``aliases`` table that
every node reads (and hears of at once).

The semantics are the aliases file's, which are Postfix's ``virtual_alias_maps``:
``alias@domain`` goes to each of its targets (users, other aliases, or addresses
elsewhere, which are forwarded), ``@domain`` is the domain's catch-all, used only
for an address no user or alias claims. A user's own extra addresses stay with
``mailhost user alias``. ``import`` copies the aliases file into the table, for a
site moving to PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from mailhost.auth.aliases import parse_aliases
from mailhost.auth.passwd import PasswdError, normalize_address, validate_user
from mailhost.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("alias", help="manage aliases and catch-alls (the aliases file, or "
                       "the aliases table with auth.backend = postgresql)")
    aliases = p.add_subparsers(dest="alias_command", required=True)
    ls = aliases.add_parser("list", help="list aliases, one 'name: target, ...' a line")
    ls.set_defaults(func=cmd_list)
    add = aliases.add_parser("add", help="add targets to an alias (made if new); "
                             "'@domain' is the domain's catch-all")
    add.add_argument("name")
    add.add_argument("targets", nargs="+", metavar="target")
    add.set_defaults(func=cmd_add)
    rm = aliases.add_parser("del", help="remove targets from an alias, or the whole alias")
    rm.add_argument("name")
    rm.add_argument("targets", nargs="*", metavar="target")
    rm.set_defaults(func=cmd_del)
    imp = aliases.add_parser("import", help="make the aliases table hold exactly the "
                             "aliases file (auth.backend = postgresql)")
    imp.add_argument("file", nargs="?", help="default: auth.aliases_file")
    imp.set_defaults(func=cmd_import)


def _local_domains(config: Config) -> set[str]:
    return {d.strip().lower().rstrip(".") for d in config.server.domains}


def _name(config: Config, raw: str) -> str:
    """An alias name: ``local@domain`` or ``@domain``, in a local domain."""
    name = normalize_address(raw)
    local, at, domain = name.rpartition("@")
    if not at or not domain:
        raise SystemExit(f"mailhost: {raw}: expected alias@domain or @domain")
    if local:
        try:
            validate_user(name)
        except PasswdError as e:
            raise SystemExit(f"mailhost: {e}") from None
    if domain not in _local_domains(config):
        raise SystemExit(f"mailhost: {raw}: {domain} is not a local domain "
                         f"(server.domains = {config.server.domains})")
    return name


def _target(raw: str) -> str:
    if "," in raw:
        raise SystemExit(f"mailhost: {raw!r}: one address per target")
    try:
        return validate_user(normalize_address(raw))
    except PasswdError as e:
        raise SystemExit(f"mailhost: target {e}") from None


def _database(config: Config) -> bool:
    return config.auth.backend == "postgresql"


def _dsn(config: Config) -> str:
    return config.auth.dsn or config.store.dsn


def _file(config: Config) -> str:
    return config.data_path(config.auth.aliases_file)


def _table(config: Config) -> dict[str, list[str]]:
    if _database(config):
        from mailhost.auth.pg_aliases import make_aliases

        return make_aliases(_dsn(config)).table()
    try:
        with open(_file(config), encoding="utf-8") as f:
            return parse_aliases(f.read(), _file(config))
    except FileNotFoundError:
        return {}


def _show(name: str, targets: list[str]) -> None:
    print(f"{name}: " + (", ".join(targets) if targets else "(none)"))


def cmd_list(args: argparse.Namespace, config: Config) -> int:
    for name, targets in sorted(_table(config).items()):
        _show(name, targets)
    return 0


def cmd_add(args: argparse.Namespace, config: Config) -> int:
    name = _name(config, args.name)
    targets = list(dict.fromkeys(_target(t) for t in args.targets))
    if name in _users(config):
        raise SystemExit(f"mailhost: {name} is a user; its mail goes to its mailbox, "
                         "not to an alias")
    if _database(config):
        from mailhost.auth.pg_aliases import make_aliases

        _show(name, make_aliases(_dsn(config)).add(name, targets))
        return 0
    have = _table(config).get(name, [])
    new = [t for t in targets if t not in have]
    if new:
        _rewrite(_file(config), lambda lines: lines + [f"{name}: {', '.join(new)}"])
    _show(name, have + new)
    return 0


def cmd_del(args: argparse.Namespace, config: Config) -> int:
    name = _name(config, args.name)
    table = _table(config)
    if name not in table:
        print(f"mailhost: no alias {name}", file=sys.stderr)
        return 1
    gone = None if not args.targets else {_target(t) for t in args.targets}
    if _database(config):
        from mailhost.auth.pg_aliases import make_aliases

        left = make_aliases(_dsn(config)).remove(name, None if gone is None else sorted(gone))
    else:
        left = [] if gone is None else [t for t in table[name] if t not in gone]

        def edit(lines: list[str]) -> list[str]:
            out = []
            for line in lines:
                entry = line.split("#", 1)[0]
                key, colon, targets = entry.partition(":")
                if not colon or normalize_address(key) != name:
                    out.append(line)
                    continue
                kept = [t.strip() for t in targets.split(",")
                        if t.strip() and gone is not None and normalize_address(t) not in gone]
                if kept:
                    out.append(f"{name}: {', '.join(kept)}")
            return out

        _rewrite(_file(config), edit)
    if left:
        _show(name, left)
    else:
        print(f"deleted {name}")
    return 0


def cmd_import(args: argparse.Namespace, config: Config) -> int:
    if not _database(config):
        raise SystemExit("mailhost: alias import: needs auth.backend = \"postgresql\" "
                         "(it fills the aliases table from the aliases file)")
    path = args.file or _file(config)
    try:
        with open(path, encoding="utf-8") as f:
            table = parse_aliases(f.read(), path)
    except OSError as e:
        raise SystemExit(f"mailhost: {path}: {e.strerror or e}") from None
    for name, targets in table.items():
        _name(config, name)
        for t in targets:
            _target(t)
    from mailhost.auth.pg_aliases import make_aliases

    make_aliases(_dsn(config)).replace(table)
    print(f"imported {len(table)} aliases from {path}")
    return 0


def _users(config: Config) -> set[str]:
    from mailhost.auth.pg_users import open_passwd

    try:
        return set(open_passwd(config).entries())
    except OSError:
        return set()


def _rewrite(path: str, edit: Callable[[list[str]], list[str]]) -> None:
    """Replace the aliases file with ``edit(its lines)``, atomically (the server reads
    it again when it changes)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    new = edit(lines)
    tmp = f"{path}.tmp.{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in new))
    os.replace(tmp, path)
