"""Per-user storage limits from the passwd file, for the store's quota.

A user's limit is the ``quota=`` field of their passwd line (``500M``, ``2G``); absent,
``0`` or unreadable, it is the configured default (``[store] default_quota``, ``0``:
unlimited). The store asks through the function ``limits`` returns
(``IQuotaStore.set_quota_limits``, wired by ``service.py``), so it never imports auth,
and a passwd edit applies at the next check: the file reloads itself when it changes.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from mailhost.auth.passwd import PasswdEntry, PasswdFile
from mailhost.store.quota import QuotaLimits, parse_size

log = Logger()


def entry_limit(entry: PasswdEntry | None) -> int:
    """The octets of an entry's own ``quota=`` field, 0 if it has none (or a bad one,
    logged)."""
    raw = entry.extra.get("quota", "") if entry is not None else ""
    try:
        return parse_size(raw)
    except ValueError:
        assert entry is not None  # "" parses
        log.warn("passwd: {user}: quota={raw!r} is not a size; the default applies",
                 user=entry.user, raw=raw, event="passwd.bad_quota")
        return 0


def limits(passwd: PasswdFile, default: Callable[[], str]) -> QuotaLimits:
    """user -> storage limit in octets, read through ``passwd``; ``default()`` gives the
    configured default's text (read at each call, so a reload applies)."""

    # (quota= text, default's text) -> octets: SMTP asks at RCPT and again at the
    # final dot, and both texts are the same for every message (issue 18). A bad
    # quota= is thus logged once per spelling, not per message.
    parsed: dict[tuple[str, str], int] = {}

    def limit(user: str) -> int:
        entry = passwd.get(user)
        key = (entry.extra.get("quota", "") if entry is not None else "", default())
        octets = parsed.get(key)
        if octets is None:
            if len(parsed) >= _MAX_PARSED:
                parsed.clear()
            octets = parsed[key] = entry_limit(entry) or parse_size(key[1])
        return octets

    return limit


#: Distinct (quota=, default) spellings remembered; past this the memo starts afresh.
_MAX_PARSED = 1024
