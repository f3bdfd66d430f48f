"""``mailhost dkim keygen``: a DKIM signing key and the DNS record that publishes it."""

from __future__ import annotations

import argparse
import os
import sys

from mailhost.mailauth.dkim_keys import generate_pem, key_from_pem, write_key, zone_line


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dkim", help="DKIM signing keys")
    cmds = p.add_subparsers(dest="dkim_command", required=True)
    kg = cmds.add_parser("keygen", help="write a new signing key (0600) and print its DNS TXT record")
    kg.add_argument("--domain", required=True, help="the signing domain (d=)")
    kg.add_argument("--selector", required=True, help="the selector (s=), e.g. 2026a")
    kg.add_argument("--algorithm", choices=["rsa", "ed25519"], default="rsa",
                    help="rsa (2048 bits, read by every verifier) or ed25519 (RFC 8463); "
                         "sign with both for the best of each")
    kg.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    kg.add_argument("--out", default="",
                    help="key file (default: <server.data_dir>/dkim/<domain>/<selector>.pem)")
    kg.set_defaults(func=cmd_keygen)


def cmd_keygen(args: argparse.Namespace, config: object) -> int:
    domain = args.domain.strip().rstrip(".").lower()
    if args.algorithm == "rsa" and args.bits < 2048:
        print("mailhost: RSA DKIM keys must have at least 2048 bits (RFC 8301 advises 2048)",
              file=sys.stderr)
        return 2
    path = args.out or os.path.join(config.server.data_dir, "dkim", domain,  # type: ignore[attr-defined]
                                    f"{args.selector}.pem")
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    pem = generate_pem(args.algorithm, args.bits)
    key = key_from_pem(domain, args.selector, pem)
    try:
        write_key(path, pem)
    except FileExistsError:
        print(f"mailhost: {path} exists; choose another selector (or remove it)", file=sys.stderr)
        return 1
    print(f"; wrote the {args.algorithm} private key to {path} (mode 0600)")
    print("; publish this record in the zone of", domain)
    print(zone_line(key))
    return 0
