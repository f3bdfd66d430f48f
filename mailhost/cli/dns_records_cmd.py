"""``mailhost dns-records``: the zone lines each configured domain needs.

What a mail admin would otherwise assemble by hand from five RFCs: MX and the host's
address, SPF, every DKIM key the server signs with, DMARC, MTA-STS (record and policy
file), TLS-RPT, DANE (TLSA from the configured certificate) and the RFC 6186 SRV
records that let clients find submission, IMAP and POP3. Printed as zone-file lines,
so they can be pasted into a zone or compared with what is published.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import ipaddress
import os
import sys
from collections.abc import Iterable
from typing import Any

from mailhost.mailauth.dkim_keys import DKIMKeyError, load_key, zone_line

#: RFC 6186 (and RFC 8314 for implicit TLS) service names: (section, listener key,
#: service, port when the endpoint string names none).
_SRV = (("submission", "listen", "_submission._tcp", 587),
        ("submission", "listen_tls", "_submissions._tcp", 465),
        ("imap", "listen", "_imap._tcp", 143), ("imap", "listen_tls", "_imaps._tcp", 993),
        ("pop3", "listen", "_pop3._tcp", 110), ("pop3", "listen_tls", "_pop3s._tcp", 995))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dns-records",
                       help="print the DNS records the configured domains need "
                            "(MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, TLSA, SRV)")
    p.add_argument("--domain", action="append", default=[],
                   help="only this domain (repeatable; default: server.domains)")
    p.add_argument("--ipv4", action="append", default=[], metavar="ADDR",
                   help="the server's public IPv4 address (repeatable) for its A record")
    p.add_argument("--ipv6", action="append", default=[], metavar="ADDR",
                   help="the server's public IPv6 address (repeatable) for its AAAA record")
    p.add_argument("--dmarc-policy", choices=["none", "quarantine", "reject"], default="none",
                   help="p= of the DMARC record (default none: start by reading the reports)")
    p.add_argument("--mta-sts-mode", choices=["testing", "enforce", "none"], default="testing",
                   help="mode of the MTA-STS policy (default testing)")
    p.add_argument("--report-to", default="",
                   help="mailbox for DMARC and TLS-RPT reports (default postmaster@<domain>)")
    p.add_argument("--ttl", type=int, default=3600)
    p.set_defaults(func=cmd_dns_records)


def cmd_dns_records(args: argparse.Namespace, config: Any) -> int:
    domains = [d.strip().rstrip(".").lower() for d in (args.domain or config.server.domains)]
    if not domains:
        print("mailhost: no domains (set server.domains or pass --domain)", file=sys.stderr)
        return 2
    try:
        addresses = [ipaddress.IPv4Address(a) for a in args.ipv4] + \
                    [ipaddress.IPv6Address(a) for a in args.ipv6]
    except ValueError as e:
        print(f"mailhost: {e}", file=sys.stderr)
        return 2
    host = config.server.hostname.rstrip(".").lower()
    problems: list[str] = []
    out = list(host_records(host, addresses, args.ttl))
    out += tlsa_records(config, host, args.ttl, problems)
    for domain in domains:
        out.append("")
        out.append(f"; --- {domain}")
        out += domain_records(config, domain, host, args, problems)
    print("\n".join(out))
    for problem in problems:
        print(f"mailhost: {problem}", file=sys.stderr)
    return 1 if problems else 0


def host_records(host: str, addresses: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address],
                 ttl: int) -> list[str]:
    lines = [f"; --- the mail server {host}"]
    addresses = list(addresses)
    for a in addresses:
        kind = "A" if a.version == 4 else "AAAA"
        lines.append(f"{host}. {ttl} IN {kind} {a}")
    if not addresses:
        lines.append(f"; {host}. {ttl} IN A <its public IPv4 address>   (pass --ipv4/--ipv6)")
    lines.append(f"; and a PTR record for each address naming {host}. (set by whoever owns the "
                 "address): many receivers refuse mail from an address without one")
    return lines


def tlsa_records(config: Any, host: str, ttl: int, problems: list[str]) -> list[str]:
    """DANE-EE (3 1 1: the certificate's public key, SHA-256; RFC 7671 §5.1): it survives
    renewals that keep the key. Only useful in a DNSSEC-signed zone."""
    if not config.tls.cert:
        return [f"; no TLSA record: no [tls] cert configured for {host}"]
    try:
        digest = spki_sha256(config.tls.cert)
    except (OSError, ValueError) as e:
        problems.append(f"cannot read tls.cert {config.tls.cert}: {e}")
        return []
    return ["; DANE (RFC 7672), only in a DNSSEC-signed zone; keep the key when renewing, or",
            ";   publish the new key's record a few TTLs before switching",
            f"_25._tcp.{host}. {ttl} IN TLSA 3 1 1 {digest}"]


def spki_sha256(cert_path: str) -> str:
    """SHA-256 of the certificate's SubjectPublicKeyInfo, in hex (TLSA selector 1, type 1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def domain_records(config: Any, domain: str, host: str, args: argparse.Namespace,
                   problems: list[str]) -> list[str]:
    ttl = args.ttl
    report_to = args.report_to or f"postmaster@{domain}"
    lines = [f"{domain}. {ttl} IN MX 10 {host}.",
             f'{domain}. {ttl} IN TXT "v=spf1 mx -all"']
    lines += dkim_records(config, domain, ttl, problems)
    lines.append(f'_dmarc.{domain}. {ttl} IN TXT "v=DMARC1; p={args.dmarc_policy}; '
                 f'rua=mailto:{report_to}"')
    lines.append(f'_smtp._tls.{domain}. {ttl} IN TXT "v=TLSRPTv1; rua=mailto:{report_to}"')
    if args.mta_sts_mode != "none":
        policy = mta_sts_policy(host, args.mta_sts_mode)
        policy_id = hashlib.sha256(policy.encode()).hexdigest()[:20]  # changes with the policy
        lines.append(f'_mta-sts.{domain}. {ttl} IN TXT "v=STSv1; id={policy_id}"')
        lines.append(f"mta-sts.{domain}. {ttl} IN CNAME {host}.")
        lines.append(f"; serve this over HTTPS (a certificate valid for mta-sts.{domain}) at")
        lines.append(f";   https://mta-sts.{domain}/.well-known/mta-sts.txt")
        lines += [f";   {line}" for line in policy.splitlines()]
    for section, key, service, default_port in _SRV:
        endpoints = getattr(getattr(config, section), key)
        if endpoints:
            port = _port_of(endpoints[0]) or default_port
            lines.append(f"{service}.{domain}. {ttl} IN SRV 0 1 {port} {host}.")
    return lines


def dkim_records(config: Any, domain: str, ttl: int, problems: list[str]) -> list[str]:
    """The keys the server signs with: the configured selectors, else every key file."""
    folder = os.path.join(config.server.data_dir, "dkim", domain)
    wanted = config.pipeline.dkim_selectors.get(domain, "").split()
    if wanted:
        selectors = wanted
    else:
        selectors = sorted(os.path.splitext(os.path.basename(p))[0]
                           for p in glob.glob(os.path.join(folder, "*.pem")))
    if not selectors:
        return [f"; no DKIM key for {domain}: mailhost dkim keygen --domain {domain} "
                "--selector <name> prints its record"]
    lines = []
    for selector in selectors:
        try:
            key = load_key(domain, selector, os.path.join(folder, f"{selector}.pem"))
        except (OSError, DKIMKeyError) as e:
            problems.append(f"DKIM key {domain}/{selector}: {e}")
            continue
        lines.append(zone_line(key, ttl))
    return lines


def mta_sts_policy(host: str, mode: str) -> str:
    """The policy file (RFC 8461 §3.2); a week's max_age, as the RFC's examples."""
    return f"version: STSv1\nmode: {mode}\nmx: {host}\nmax_age: 604800\n"


def _port_of(endpoint: str) -> int | None:
    """The port of a ``tcp:PORT:…``/``ssl:PORT:…`` listener string, if it says one."""
    parts = endpoint.split(":")
    for part in parts[1:]:
        if part.startswith("port="):
            part = part[5:]
        if part.isdigit():
            return int(part)
    return None

