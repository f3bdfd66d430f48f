"""Client addresses for the anti-abuse checks: parsing, CIDR lists, allowlists.

One place decides what a client address is (an IPv4 address mapped into IPv6 is the
IPv4 address, so a dual-stack listener does not give one client two identities),
which network a greylisting triplet records (IPv4 /24, IPv6 /64: a sender's pool of
outgoing servers retries from another address of the same network), and whether a
client, sender or recipient is on an allowlist.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(ip: str) -> IPAddress | None:
    """The client's address (IPv4-mapped IPv6 as IPv4; a zone index dropped), or None
    for something that is not an IP address (a UNIX socket peer)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_networks(values: Iterable[str], key: str = "networks") -> tuple[IPNetwork, ...]:
    """CIDR strings (a bare address is its /32 or /128) as networks; ValueError names
    ``key`` and the bad value."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{key}: not an address or CIDR network: {value!r}") from None
    return tuple(out)


def in_networks(ip: str | IPAddress | None, networks: Iterable[IPNetwork]) -> bool:
    addr = client_address(ip) if isinstance(ip, str) else ip
    if addr is None:
        return False
    return any(addr.version == net.version and addr in net for net in networks)


def greylist_network(ip: str) -> str:
    """The network a greylisting triplet records: the /24 of an IPv4 address, the /64
    of an IPv6 one (the address itself if it is none)."""
    addr = client_address(ip)
    if addr is None:
        return ip
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def _domain(value: str) -> str:
    return value.strip().lower().rstrip(".")


def domain_matches(domain: str, patterns: Iterable[str]) -> bool:
    """``domain`` is one of ``patterns`` or below one (``example.com`` also matches
    ``mx.example.com``, never ``badexample.com``)."""
    domain = _domain(domain)
    if not domain:
        return False
    for pattern in patterns:
        pattern = _domain(pattern).lstrip(".")
        if pattern and (domain == pattern or domain.endswith("." + pattern)):
            return True
    return False


@dataclass(frozen=True)
class Allowlist:
    """Who greylisting never delays: client networks, sender domains, recipients.

    Recipients are whole addresses (``abuse@example.com``), a local part for every
    local domain (``postmaster@``) or a domain (``example.com``, with subdomains)."""

    clients: tuple[IPNetwork, ...] = ()
    sender_domains: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()

    @classmethod
    def parse(cls, clients: Iterable[str] = (), sender_domains: Iterable[str] = (),
              recipients: Iterable[str] = (), key: str = "allowlist") -> Allowlist:
        return cls(parse_networks(clients, f"{key}_clients"),
                   tuple(_domain(d) for d in sender_domains if _domain(d)),
                   tuple(r.strip().lower() for r in recipients if r.strip()))

    def client(self, ip: str) -> bool:
        return in_networks(ip, self.clients)

    def sender(self, sender: str) -> bool:
        _, at, domain = sender.rpartition("@")
        return bool(at) and domain_matches(domain, self.sender_domains)

    def recipient(self, recipient: str) -> bool:
        rcpt = recipient.strip().lower()
        local, at, domain = rcpt.rpartition("@")
        if not at:
            return False
        for entry in self.recipients:
            if "@" in entry:
                if entry == rcpt or (entry.endswith("@") and entry[:-1] == local):
                    return True
            elif domain_matches(domain, (entry,)):
                return True
        return False


__all__ = ["Allowlist", "client_address", "domain_matches", "greylist_network",
           "in_networks", "parse_networks"]
