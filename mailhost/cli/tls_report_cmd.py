"""``mailhost tls-report --day YYYY-MM-DD``: a day's outbound TLS results as RFC 8460 JSON.

It reads the records the server appends to ``<data_dir>/tls-reports/`` (one JSON
line per outbound TLS session and per policy failure, ``mailhost.outbound.tlsrpt``)
and prints the report a sending MTA owes the recipient domains' ``rua``: one entry
per (domain, policy), success and failure counts, failure details by result type.
It prints; sending it to each domain's ``_smtp._tls`` address is left to the admin.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

from mailhost.config import Config
from mailhost.outbound.tlsrpt import report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tls-report",
                       help="print one day's outbound TLS results in the RFC 8460 JSON shape")
    p.add_argument("--day", default="",
                   help="UTC day, YYYY-MM-DD (default: yesterday)")
    p.add_argument("--domain", default="",
                   help="only the policies of this recipient domain")
    p.set_defaults(func=cmd_tls_report)


def cmd_tls_report(args: argparse.Namespace, config: Config) -> int:
    day = args.day
    if not day:
        day = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)).strftime(
            "%Y-%m-%d")
    try:
        datetime.date.fromisoformat(day)
    except ValueError:
        print(f"mailhost: --day {day!r} is not YYYY-MM-DD", file=sys.stderr)
        return 2
    contact = f"postmaster@{config.server.domains[0]}" if config.server.domains else ""
    out = report(config.data_path("tls-reports"), day, config.server.hostname, contact)
    if args.domain:
        want = args.domain.lower().rstrip(".")
        out["policies"] = [p for p in out["policies"]
                           if p["policy"]["policy-domain"] == want]
    print(json.dumps(out, indent=2))
    return 0
