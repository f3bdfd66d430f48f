"""Flag normalisation and STORE arithmetic shared by every store."""

from __future__ import annotations

from collections.abc import Iterable

from mailhost.store.interfaces import SYSTEM_FLAGS, StoreError

_SYSTEM_BY_LOWER = {f.lower(): f for f in SYSTEM_FLAGS}


def normalize_flags(flags: Iterable[str]) -> frozenset[str]:
    """Canonical spelling of system flags (case-insensitive in IMAP); keywords kept as
    given. ``\\Recent`` and unknown backslash flags are not storable and are dropped."""
    out = set()
    for flag in flags:
        if flag.startswith("\\"):
            canon = _SYSTEM_BY_LOWER.get(flag.lower())
            if canon is not None:
                out.add(canon)
        elif flag and not any(c.isspace() or ord(c) < 0x20 for c in flag):
            out.add(flag)
    return frozenset(out)


def apply_mode(current: frozenset[str], flags: frozenset[str], mode: str) -> frozenset[str]:
    """The flag set after an IMAP STORE of ``flags`` with mode add/remove/replace."""
    if mode == "add":
        return current | flags
    if mode == "remove":
        return current - flags
    if mode == "replace":
        return flags
    raise StoreError(f"unknown flag mode {mode!r}")
