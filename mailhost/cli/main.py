"""The ``mailhost`` admin command: users, the queue, config checks and certificates.

It reads the same ``--config FILE`` as ``twistd mailhost``, so it finds the same
passwd file and spool the server uses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mailhost.config import ConfigError, load


def build_parser() -> argparse.ArgumentParser:
    from mailhost.cli import (
        alias_cmd,
        cert_cmd,
        check_config_cmd,
        db_cmd,
        dkim_cmd,
        dns_records_cmd,
        queue_cmd,
        store_cmd,
        tls_report_cmd,
        user_cmd,
    )

    modules = [user_cmd, alias_cmd, queue_cmd, check_config_cmd, cert_cmd, dkim_cmd, dns_records_cmd,
               tls_report_cmd, db_cmd, store_cmd]
    parser = argparse.ArgumentParser(prog="mailhost", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="TOML config file (as for twistd mailhost)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config key (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in modules:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "needs_config", True):
        try:
            config = load(args.config, args.set)
        except ConfigError as e:
            print(f"mailhost: config error: {e}", file=sys.stderr)
            return 2
    else:
        config = None
    try:
        return int(args.func(args, config) or 0)
    except ConfigError as e:
        print(f"mailhost: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
