"""ESEARCH (RFC 4731), SEARCHRES (RFC 5182) and ESORT (RFC 5267) result options.

``SEARCH RETURN (MIN MAX ALL COUNT SAVE) ...`` and ``SORT RETURN (...) ...`` answer
with one ``* ESEARCH (TAG "t") [UID] ...`` line instead of ``* SEARCH``/``* SORT``;
``RETURN ()`` means ``RETURN (ALL)``. For SORT the numbers keep the sort order: MIN
is the first message in it, MAX the last, ALL lists them in order (runs that ascend
by one written ``a:b``). SAVE keeps the result, as UIDs, for ``$`` in later commands
(``SelectedMailbox.saved``): all of it, or only the MIN and/or MAX message when those
are asked for too; SAVE alone sends no ESEARCH line.
"""

from __future__ import annotations

import re

from mailhost.imap.encoding import quote
from mailhost.imap.parser import (
    Atom,
    FetchItem,
    ParseError,
    SearchKey,
    SequenceSet,
    parse_fetch_items,
)
from mailhost.imap.responses import format_set

OPTIONS = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE", "UPDATE", "PARTIAL", "CONTEXT"})
#: The options that return (part of) the result; UPDATE without one of them means ALL.
_RESULTS = frozenset({"MIN", "MAX", "ALL", "COUNT", "PARTIAL"})


class ReturnOptions(frozenset):
    """The upper-cased RETURN options; ``partial`` is PARTIAL's ``(first, last)``
    (CONTEXT=SEARCH, RFC 5267 4.4: 1-based positions in the result), else None;
    ``update_fetch`` the FETCH attributes of ``UPDATE (fetch-att ...)`` (NOTIFY, RFC
    5465 7)."""

    partial: tuple[int, int] | None = None
    update_fetch: tuple[FetchItem, ...] = ()


def parse_return(args: list) -> tuple[ReturnOptions | None, list]:
    """(the RETURN options, or None without RETURN; the remaining arguments)."""
    if not args or not isinstance(args[0], Atom) or args[0].upper() != "RETURN":
        return None, args
    if len(args) < 2 or not isinstance(args[1], list):
        raise ParseError(None, "RETURN needs a list of options")
    opts = set()
    partial = None
    update_fetch: tuple[FetchItem, ...] = ()
    given = list(args[1])
    i = 0
    while i < len(given):
        o = given[i]
        i += 1
        if not isinstance(o, Atom) or o.upper() not in OPTIONS:
            raise ParseError(None, f"Unknown RETURN option {o!s}")
        if o.upper() == "PARTIAL":
            if partial is not None:
                raise ParseError(None, "PARTIAL can be given once")
            partial = parse_partial(given[i] if i < len(given) else None)
            i += 1
        if o.upper() == "UPDATE" and i < len(given) and isinstance(given[i], list):
            # RFC 5465 7: modifier-update = "UPDATE" ["(" fetch-att *(SP fetch-att) ")"]
            atts = given[i]
            i += 1
            if not atts:
                raise ParseError(None, "UPDATE expects FETCH attributes in its list")
            update_fetch = tuple(parse_fetch_items([list(atts)]))  # BAD now if bad
        if o.upper() != "CONTEXT":  # RFC 5267 4.2: a hint that more PARTIALs will come
            opts.add(o.upper())
    if "PARTIAL" in opts and "ALL" in opts:
        raise ParseError(None, "PARTIAL conflicts with ALL")
    if not opts & _RESULTS and (not opts or "UPDATE" in opts):
        opts.add("ALL")
    out = ReturnOptions(opts)
    out.partial = partial
    out.update_fetch = update_fetch
    return out, args[2:]


def parse_partial(token: object) -> tuple[int, int]:
    """PARTIAL's ``n:m`` range (RFC 5267 4.4), in either order, both nonzero 32-bit."""
    if not isinstance(token, str) or not re.fullmatch(r"[1-9][0-9]{0,9}:[1-9][0-9]{0,9}", token):
        raise ParseError(None, "PARTIAL needs a range n:m")
    a, b = (int(x) for x in token.split(":"))
    if max(a, b) > 0xFFFFFFFF:
        raise ParseError(None, "PARTIAL range out of bounds")
    return (a, b) if a <= b else (b, a)


def substitute_saved(key: SearchKey, saved: list[int]) -> SearchKey:
    """``key`` with every ``$`` (a SEQ or UID key with a saved set) made the UID set
    of the saved result, which is what it stands for either way (RFC 5182 2.1)."""
    if key.op in ("SEQ", "UID") and key.args[0].saved:
        return SearchKey("UID", (SequenceSet(tuple((u, u) for u in saved)),))
    if key.op in ("AND", "OR", "NOT"):
        return SearchKey(key.op, tuple(substitute_saved(k, saved) for k in key.args))
    return key


def uses_saved(key: SearchKey) -> bool:
    if key.op in ("SEQ", "UID"):
        return bool(key.args[0].saved)
    if key.op in ("AND", "OR", "NOT"):
        return any(uses_saved(k) for k in key.args)
    return False


def saved_result(opts: frozenset[str], uids: list[int]) -> list[int]:
    """What SAVE keeps of a result (``uids`` in result order), ascending: MIN and/or
    MAX alone keep just those; with ALL or COUNT, everything found (RFC 9051 6.4.4.1,
    Table 4, and RFC 5182 2.4). The MODSEQ an ESEARCH carries is that of the same
    messages (RFC 4731 3.2)."""
    if not uids:
        return []
    if ("MIN" in opts or "MAX" in opts) and not {"ALL", "COUNT"} & opts:
        keep = set()
        if "MIN" in opts:
            keep.add(uids[0])
        if "MAX" in opts:
            keep.add(uids[-1])
        return sorted(keep)
    return sorted(uids)


def response(tag: str, uid: bool, opts: frozenset[str], nums: list[int]) -> bytes:
    """The ``* ESEARCH`` line for ``nums`` (in result order), or b"" for SAVE alone."""
    if not opts - {"SAVE"}:
        return b""
    partial = getattr(opts, "partial", None)
    out = [b"* ESEARCH (TAG " + quote(tag) + b")"]
    if uid:
        out.append(b"UID")
    if nums:
        if "MIN" in opts:
            out.append(b"MIN %d" % nums[0])
        if "MAX" in opts:
            out.append(b"MAX %d" % nums[-1])
        if "ALL" in opts:
            out.append(b"ALL " + format_set(nums))
    if partial is not None:
        window = nums[partial[0] - 1:partial[1]]
        out.append(b"PARTIAL (%d:%d %s)" % (partial[0], partial[1],
                                           format_set(window) if window else b"NIL"))
    if "COUNT" in opts:
        out.append(b"COUNT %d" % len(nums))
    return b" ".join(out) + b"\r\n"
