"""The unit a client address is counted in, for every per-address policy.

Connection limits (``mailhost.limits``) and login throttling
(``mailhost.auth.throttle``) must agree on who "one client" is: an IPv4 address, or
an IPv6 /64, because one host usually owns a whole /64 and can pick any address in it.
"""

from __future__ import annotations

import ipaddress


def client_key(host: str) -> str:
    """The unit a client is counted in: its IPv4 address, or its IPv6 /64.

    An IPv4-mapped IPv6 address counts as its IPv4 address; anything that is not an
    IP address (a UNIX socket peer) is its own key.
    """
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)
