"""``mailhost user add|del|passwd|list|quota|alias``: manage the passwd file (or the
``users`` table with ``[auth] backend = "postgresql"``).

Passwords are read from a prompt (or one line of standard input when it is not a
terminal), never from argv, where other users could see them in ``ps``. Names and
aliases pass the server's one validation (``mailhost.store.names.check_address``,
through ``validate_user``) and must be in a local domain, so the CLI cannot write a
name the server would skip or could not serve.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from mailhost.auth.hashing import hash_password
from mailhost.auth.passwd import PasswdEntry, PasswdError, PasswdFile, validate_user
from mailhost.auth.quota_limits import entry_limit
from mailhost.config import Config
from mailhost.store.quota import format_size, parse_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("user", help="manage mail users (the passwd file)")
    users = p.add_subparsers(dest="user_command", required=True)
    add = users.add_parser("add", help="add a user; the password is prompted or read from stdin")
    add.add_argument("address")
    add.add_argument("--alias", action="append", default=[], help="an extra address (repeatable)")
    add.set_defaults(func=cmd_add)
    rm = users.add_parser("del", help="delete a user (the mailbox stays on disk)")
    rm.add_argument("address")
    rm.set_defaults(func=cmd_del)
    pw = users.add_parser("passwd", help="change a user's password")
    pw.add_argument("address")
    pw.set_defaults(func=cmd_passwd)
    ls = users.add_parser("list", help="list users")
    ls.set_defaults(func=cmd_list)
    qu = users.add_parser("quota", help="show a user's storage usage and limit, or set the "
                          "limit (--set 500M; 0: the store.default_quota)")
    qu.add_argument("address")
    # dest: the global --set (config overrides) owns args.set.
    qu.add_argument("--set", dest="quota_size", metavar="SIZE",
                    help="the new limit: 500M, 2G, 10240; 0 for the default")
    qu.set_defaults(func=cmd_quota)
    al = users.add_parser("alias", help="add or remove a user's extra addresses (aliases=)")
    al.add_argument("address")
    al.add_argument("--add", action="append", default=[], metavar="ALIAS",
                    help="an address to add (repeatable)")
    al.add_argument("--del", dest="remove", action="append", default=[], metavar="ALIAS",
                    help="an address to remove (repeatable)")
    al.set_defaults(func=cmd_alias)


def _passwd(config: Config) -> PasswdFile:
    """The passwd file, or the users table with ``[auth] backend = "postgresql"``."""
    from mailhost.auth.pg_users import open_passwd

    return open_passwd(config)


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise SystemExit("mailhost: passwords do not match")
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise SystemExit("mailhost: empty password refused")
    return password


def _local_domains(config: Config) -> set[str]:
    return {d.strip().lower().rstrip(".") for d in config.server.domains}


def _local_address(config: Config, address: str, what: str = "") -> str:
    """``address`` checked as a user name and in a local domain; ``what`` prefixes the
    error ("--alias x: ")."""
    try:
        checked = validate_user(address)
    except PasswdError as e:
        raise SystemExit(f"mailhost: {what}{e}") from None
    domain = checked.rpartition("@")[2]
    if domain not in _local_domains(config):
        raise SystemExit(f"mailhost: {what}{domain} is not a local domain "
                         f"(server.domains = {config.server.domains})")
    return checked


def _user(config: Config, address: str) -> str:
    return _local_address(config, address)


def _aliases(config: Config, user: str, given: list[str],
             entries: dict[str, PasswdEntry]) -> list[str]:
    """The --alias addresses, validated like user names and in a local domain (an
    alias elsewhere would let the user send as someone else's address)."""
    aliases: list[str] = []
    for raw in given:
        if "," in raw:
            raise SystemExit(f"mailhost: --alias {raw!r}: one address per --alias")
        alias = _local_address(config, raw, f"--alias {raw}: ")
        if alias == user or alias in entries:
            raise SystemExit(f"mailhost: --alias {alias}: that is a user, not an alias")
        if alias not in aliases:
            aliases.append(alias)
    return aliases


def _existing_user(config: Config, address: str,
                   ) -> tuple[str, PasswdFile, dict[str, PasswdEntry], PasswdEntry] | None:
    """The user ``address`` names, the passwd store, all its entries (to change and save
    back) and the user's own; None, said on stderr, when there is no such user."""
    user = _user(config, address)
    passwd = _passwd(config)
    entries = dict(passwd.entries())
    entry = entries.get(user)
    if entry is None:
        print(f"mailhost: no such user {user}", file=sys.stderr)
        return None
    return user, passwd, entries, entry


def cmd_add(args: argparse.Namespace, config: Config) -> int:
    user = _user(config, args.address)
    passwd = _passwd(config)
    entries = dict(passwd.entries())
    if user in entries:
        print(f"mailhost: {user} exists (use 'user passwd' to change the password)",
              file=sys.stderr)
        return 1
    aliases = _aliases(config, user, args.alias, entries)
    extra = {"aliases": ",".join(aliases)} if aliases else {}
    entries[user] = PasswdEntry(user, hash_password(_read_password()), extra)
    try:
        passwd.save(entries)
    except PasswdError as e:  # the writer's own check; the file is left as it was
        raise SystemExit(f"mailhost: {e}") from None
    print(f"added {user} to {passwd.path}")
    return 0


def cmd_del(args: argparse.Namespace, config: Config) -> int:
    found = _existing_user(config, args.address)
    if found is None:
        return 1
    user, passwd, entries, _entry = found
    del entries[user]
    passwd.save(entries)
    print(f"deleted {user}")
    return 0


def cmd_passwd(args: argparse.Namespace, config: Config) -> int:
    found = _existing_user(config, args.address)
    if found is None:
        return 1
    user, passwd, entries, entry = found
    entry.password_hash = hash_password(_read_password())
    passwd.save(entries)
    print(f"password changed for {user}")
    return 0


def cmd_list(args: argparse.Namespace, config: Config) -> int:
    """One user a line on stdout; when there is none, a note on stderr naming the file,
    so an admin pointed at the wrong data directory is told, not shown nothing."""
    passwd = _passwd(config)
    if config.auth.backend == "passwd" and not os.path.exists(passwd.path):
        print(f"mailhost: no passwd file at {passwd.path} (no users: the server creates it "
              "on its first start, 'mailhost user add' too)", file=sys.stderr)
        return 1
    entries = passwd.entries()
    if not entries:
        print(f"mailhost: no users in {passwd.path}", file=sys.stderr)
        return 0
    for user, entry in sorted(entries.items()):
        aliases = ", ".join(entry.aliases)
        print(f"{user}" + (f"  (aliases: {aliases})" if aliases else ""))
    return 0


def cmd_alias(args: argparse.Namespace, config: Config) -> int:
    """Change a user's ``aliases=`` (the passwd file, or the users table's ``extra``,
    which every node hears of at once); without --add/--del, show them."""
    found = _existing_user(config, args.address)
    if found is None:
        return 1
    user, passwd, entries, entry = found
    others = {u: e for u, e in entries.items() if u != user}
    taken = {a for e in others.values() for a in e.aliases}
    added = _aliases(config, user, args.add, entries)
    for alias in added:
        if alias in taken:
            raise SystemExit(f"mailhost: --add {alias}: another user has that alias")
    gone = {_local_address(config, a, f"--del {a}: ") for a in args.remove}
    aliases = [a for a in entry.aliases if a not in gone]
    aliases += [a for a in added if a not in aliases]
    if args.add or args.remove:
        if aliases:
            entry.extra["aliases"] = ",".join(aliases)
        else:
            entry.extra.pop("aliases", None)
        passwd.save(entries)
    print(f"{user}: " + (", ".join(aliases) if aliases else "no aliases"))
    return 0


def _usage_in_database(config: Config, user: str) -> tuple[int, int]:
    """(octets, messages) the PostgreSQL store counts for ``user`` (schema 5)."""
    import psycopg

    from mailhost.db.database import error_line
    from mailhost.store.postgresql import sql

    try:
        with psycopg.connect(config.store.dsn, connect_timeout=10) as conn:
            return sql.usage(conn, user)
    except psycopg.Error as e:
        raise SystemExit(f"mailhost: database error: {error_line(e)}") from None


def cmd_quota(args: argparse.Namespace, config: Config) -> int:
    """Show usage against the limit (from the Maildir's ``maildirsize``, written by the
    server; this command writes nothing there) or, with ``--set``, change the user's
    ``quota=`` field: the running server applies it at its next check."""
    found = _existing_user(config, args.address)
    if found is None:
        return 1
    user, passwd, entries, entry = found
    if args.quota_size is not None:
        try:
            limit = parse_size(args.quota_size)
        except ValueError as e:
            raise SystemExit(f"mailhost: --set: {e}") from None
        if limit:
            entry.extra["quota"] = format_size(limit)
        else:
            entry.extra.pop("quota", None)
        passwd.save(entries)
        print(f"quota of {user}: " + (format_size(limit) if limit else
                                      f"the default ({config.store.default_quota})"))
        return 0
    own = entry_limit(entry)
    limit = own or parse_size(config.store.default_quota)
    source = "quota=" if own else "store.default_quota"
    if config.store.backend == "postgresql":
        octets, messages = _usage_in_database(config, user)
    elif config.store.backend != "maildir":
        print(f"{user}: limit {format_size(limit) if limit else 'none'} ({source}); "
              "usage is not kept by the memory store")
        return 0
    else:
        from mailhost.store.maildir import usage_on_disk

        octets, messages = usage_on_disk(config.data_path(config.store.path), user)
    if limit:
        shown = f"{octets} of {limit} octets ({100 * octets // limit}%), limit " \
                f"{format_size(limit)} ({source})"
    else:
        shown = f"{octets} octets, no limit"
    print(f"{user}: {shown}, {messages} messages")
    return 0
