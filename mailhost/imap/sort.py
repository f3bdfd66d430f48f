"""SORT (RFC 5256), SORT=DISPLAY (RFC 5957): the sort program and its evaluation.

Keys compare under i;unicode-casemap (the header table holds casemapped strings):
ARRIVAL (INTERNALDATE), CC/FROM/TO (the first address's mailbox), DATE (the Date
header in UTC, else INTERNALDATE), SIZE, SUBJECT (the base subject), DISPLAYFROM and
DISPLAYTO (the first address's display name, else its address). ``REVERSE`` turns one
key around. Ties go by sequence number: the input is in that order and every pass is
a stable sort, last key first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mailhost.imap.headerindex import Fields
from mailhost.imap.parser import Atom, ParseError

KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO",
                  "DISPLAYFROM", "DISPLAYTO"})
#: Keys that need the header table (the others come from the folder's index).
HEADER_KEYS = frozenset({"CC", "DATE", "FROM", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"})
#: The header table column each header key sorts by (DATE: ``date``, else INTERNALDATE).
FIELD = {"CC": "cc_mailbox", "FROM": "from_mailbox", "TO": "to_mailbox",
          "SUBJECT": "base", "DISPLAYFROM": "from_display", "DISPLAYTO": "to_display"}


def parse_criteria(token: object) -> list[tuple[str, bool]]:
    """``(key, reverse)`` pairs of a parenthesised sort program."""
    if not isinstance(token, list) or not token:
        raise ParseError(None, "SORT needs a parenthesised list of sort keys")
    out: list[tuple[str, bool]] = []
    reverse = False
    for t in token:
        if not isinstance(t, Atom):
            raise ParseError(None, "Invalid sort key")
        up = t.upper()
        if up == "REVERSE" and not reverse:
            reverse = True
            continue
        if up not in KEYS:
            raise ParseError(None, f"Unknown sort key {t!s}")
        out.append((up, reverse))
        reverse = False
    if reverse:
        raise ParseError(None, "REVERSE needs a sort key")
    return out


def sort_uids(uids: Sequence[int], criteria: Sequence[tuple[str, bool]],
              fields: Mapping[int, Fields], dates: Mapping[int, float],
              sizes: Mapping[int, int]) -> list[int]:
    """``uids`` (in sequence order) sorted by ``criteria``. ``dates``/``sizes`` give
    INTERNALDATE and size by UID (needed for ARRIVAL/SIZE, and DATE's fallback)."""
    def values(name: str) -> list[Any]:
        return list(map(_key_function(name, fields, dates, sizes), uids))

    return [uids[i] for i in sort_positions(len(uids), criteria, values)]


def sort_positions(n: int, criteria: Sequence[tuple[str, bool]],
                   values: Callable[[str], Sequence[Any]]) -> list[int]:
    """The positions ``0..n-1`` of the messages (in sequence order) sorted by
    ``criteria``; ``values(key)`` gives that sort key's value of each, by position.
    One stable pass per key, last key first: a key list per key and one int per
    message, no object per message per key (issue 16: SORT's peak memory)."""
    order = list(range(n))
    for name, reverse in reversed(criteria):
        order.sort(key=values(name).__getitem__, reverse=reverse)
    return order


def _key_function(name: str, fields: Mapping[int, Fields], dates: Mapping[int, float],
                  sizes: Mapping[int, int]) -> Any:
    if name == "ARRIVAL":
        return lambda u: dates.get(u, 0.0)
    if name == "SIZE":
        return lambda u: sizes.get(u, 0)
    if name == "DATE":
        def sent(u: int) -> float:
            f = fields.get(u)
            d = f.date if f is not None else None
            return d if d is not None else dates.get(u, 0.0)
        return sent
    attr = FIELD[name]

    def text(u: int) -> str:
        f = fields.get(u)
        return getattr(f, attr) if f is not None else ""
    return text
