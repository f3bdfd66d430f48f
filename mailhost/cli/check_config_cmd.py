"""``mailhost check-config FILE``: validate a config and print the effective settings."""

from __future__ import annotations

import argparse
import json

from mailhost.config import Config, as_dict, load
from mailhost.tls import server_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-config", help="validate a config file and print the effective settings")
    p.add_argument("file", nargs="?", help="the config file (default: --config)")
    p.set_defaults(func=cmd_check)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


# Keys whose values are secrets: shown as set or not, never printed.
SECRET_KEYS = {"outbound.smarthost_password", "web.password"}


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    """Unlike the other commands, this loads the TLS certificate and key, as the server
    will: a missing or mismatched file is a config error here, before a start fails."""
    if args.file:
        config = load(args.file, args.set)
    server_options(config.tls)
    for section, values in as_dict(config).items():
        print(f"[{section}]")
        for key, value in values.items():
            if f"{section}.{key}" in SECRET_KEYS and value:
                print(f'{key} = "********"  # set, not shown')
                continue
            print(f"{key} = {_toml_value(value)}")
        print()
    print(f"# OK: {args.file or args.config or 'defaults'}")
    return 0
