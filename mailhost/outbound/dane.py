"""DANE for SMTP (RFC 7672): which TLSA records are usable, and does a chain match them.

Only what RFC 7672 §3.1 asks of an SMTP client:

- **usable** records are DANE-TA(2) and DANE-EE(3), selector Cert(0) or SPKI(1),
  matching type Full(0), SHA2-256(1) or SHA2-512(2); PKIX-TA(0) and PKIX-EE(1) and
  anything unknown are *unusable* (§3.1.3). An RRset of unusable records only makes
  TLS mandatory without authentication (§2.2, as Postfix's "encrypt");
- **DANE-EE(3)** matches the server's own certificate; neither its names nor its
  dates are checked (§3.1.1);
- **DANE-TA(2)** matches a certificate of the chain the server sent; the leaf must
  chain up to it signature by signature, be within its dates, and name the MX host
  (the TLSA base domain, §3.2.2).

The AD bit decides whether records are believed at all; that is the caller's
(``security.py``): a TLSA answer without it is ignored, as Postfix ignores one from
an "insecure" zone.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

DANE_TA = 2
DANE_EE = 3

TLSARecord = tuple[int, int, int, bytes]


@dataclass(frozen=True)
class DANEResult:
    """A chain checked against TLSA records: ``ok``, or the RFC 8460 result type and why."""

    ok: bool
    result_type: str = ""
    detail: str = ""


def usable(records: Iterable[TLSARecord]) -> list[TLSARecord]:
    """The records an SMTP client may use (RFC 7672 §3.1)."""
    return [r for r in records
            if r[0] in (DANE_TA, DANE_EE) and r[1] in (0, 1) and r[2] in (0, 1, 2)]


def association(cert: x509.Certificate, selector: int, matching: int) -> bytes:
    """The data a TLSA record with ``selector`` and ``matching`` type holds for ``cert``."""
    if selector == 0:
        data = cert.public_bytes(serialization.Encoding.DER)
    else:
        data = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    if matching == 1:
        return hashlib.sha256(data).digest()
    if matching == 2:
        return hashlib.sha512(data).digest()
    return data


def _matches(cert: x509.Certificate, record: TLSARecord) -> bool:
    _usage, selector, matching, data = record
    return association(cert, selector, matching) == bytes(data)


def names_of(cert: x509.Certificate) -> list[str]:
    """The DNS names a certificate is for: its SAN dNSNames, else its subject CN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return [n.lower().rstrip(".") for n in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return [str(c.value).lower().rstrip(".") for c in cns]


def name_matches(pattern: str, host: str) -> bool:
    """``host`` matches a certificate name or an MTA-STS ``mx`` pattern: exactly, or
    ``*.example.com`` for exactly one more label on the left (RFC 6125 §6.4.3,
    RFC 8461 §4.1)."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def check_dates(cert: x509.Certificate, now: datetime.datetime) -> str:
    """'' when ``cert`` is valid at ``now``; else why not."""
    if now > cert.not_valid_after_utc:
        return f"certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    if now < cert.not_valid_before_utc:
        return f"certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d}"
    return ""


def check_chain(chain: Sequence[x509.Certificate], records: Iterable[TLSARecord],
                host: str, now: datetime.datetime | None = None) -> DANEResult:
    """Check the chain a server sent (leaf first) against its usable TLSA records."""
    records = usable(records)
    if not chain:
        return DANEResult(False, "validation-failure", f"{host} sent no certificate")
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    leaf = chain[0]
    if any(r[0] == DANE_EE and _matches(leaf, r) for r in records):
        return DANEResult(True)
    ta_records = [r for r in records if r[0] == DANE_TA]
    for depth, cert in enumerate(chain):
        if not any(_matches(cert, r) for r in ta_records):
            continue
        # The trust anchor is chain[depth]: each certificate below it must be signed
        # by the next one up.
        try:
            for i in range(depth):
                chain[i].verify_directly_issued_by(chain[i + 1])
        except (ValueError, TypeError, InvalidSignature) as e:
            return DANEResult(False, "validation-failure",
                              f"{host}: chain does not lead to the DANE-TA certificate ({e})")
        dated = check_dates(leaf, now)
        if dated:
            return DANEResult(False, "certificate-expired", f"{host}: {dated}")
        if not any(name_matches(n, host) for n in names_of(leaf)):
            return DANEResult(False, "certificate-host-mismatch",
                              f"{host}: certificate is for {', '.join(names_of(leaf)) or 'no name'}")
        return DANEResult(True)
    return DANEResult(False, "validation-failure",
                      f"{host}: no certificate matches its TLSA records")
