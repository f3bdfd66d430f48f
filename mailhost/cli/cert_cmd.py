"""``mailhost cert selfsigned``: a throwaway certificate for development and tests."""

from __future__ import annotations

import argparse
import os

from mailhost.tls import write_selfsigned


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cert", help="TLS certificates")
    certs = p.add_subparsers(dest="cert_command", required=True)
    ss = certs.add_parser("selfsigned", help="write a self-signed certificate and key")
    ss.add_argument("--hostname", required=True)
    ss.add_argument("--out", default="mailhost-data/tls",
                    help="directory for cert.pem and key.pem (default: mailhost-data/tls)")
    ss.add_argument("--days", type=int, default=825)
    ss.set_defaults(func=cmd_selfsigned, needs_config=False)


def cmd_selfsigned(args: argparse.Namespace, config: object) -> int:
    cert = os.path.join(args.out, "cert.pem")
    key = os.path.join(args.out, "key.pem")
    write_selfsigned(args.hostname, cert, key, days=args.days)
    print(f"wrote {cert} and {key} for {args.hostname}")
    print("[tls]")
    print(f'cert = "{cert}"')
    print(f'key = "{key}"')
    return 0
