"""Organizational domains (RFC 7489 §3.2) from the Public Suffix List.

The list comes from the ``publicsuffixlist`` package, which ships a current copy
of the PSL and is updated on PyPI as the list changes (no copy of ours to go
stale). Loading it takes a few tens of milliseconds, so it is loaded once, lazily.
"""

from __future__ import annotations

import functools

from publicsuffixlist import PublicSuffixList


@functools.lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


@functools.lru_cache(maxsize=4096)  # five lookups per message, for a few domains
def organizational_domain(domain: str) -> str:
    """The registered domain of ``domain`` (``mail.example.co.uk`` → ``example.co.uk``);
    a public suffix itself, or a name the list cannot place, is its own."""
    domain = domain.strip().rstrip(".").lower()
    return _psl().privatesuffix(domain) or domain


def aligned(a: str, b: str, mode: str) -> bool:
    """Identifier alignment (RFC 7489 §3.1): ``s`` exact, ``r`` same organizational domain."""
    a, b = a.strip().rstrip(".").lower(), b.strip().rstrip(".").lower()
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)
