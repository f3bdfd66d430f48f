"""SEARCH, SORT and THREAD (RFC 3501 6.4.4, RFC 5256), with ESEARCH, SEARCHRES, ESORT,
SORT=DISPLAY and WITHIN.

Each runs the search program (``search.search``) over the session's messages, header
keys answered from the folder's ``headerindex.HeaderTable`` (read once per folder,
then kept, so a second SORT or ``SEARCH SUBJECT`` opens no file), then sorts or
threads the result from the same table and the folder's index columns.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mailhost.imap import condstore, context, esearch, parser, rev2
from mailhost.imap import search as searching
from mailhost.imap import sort as sorting
from mailhost.imap import thread as threading
from mailhost.imap.headerindex import HeaderTable
from mailhost.imap.responses import No
from mailhost.imap.selected import dates_ready, folder_columns
from mailhost.imap.states import SEL

if TYPE_CHECKING:
    from mailhost.imap.selected import SelectedMailbox
    from mailhost.imap.server import IMAPServer

THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
_NUMBER = re.compile(rb"\d+")
_BADCHARSET = "[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset"


def _selected(s: IMAPServer) -> SelectedMailbox:
    assert s.selected is not None
    return s.selected


def _table(s: IMAPServer, sel: SelectedMailbox) -> HeaderTable:
    return s.factory.header_tables.table(sel.folder)


async def _matching(s: IMAPServer, sel: SelectedMailbox, key: parser.SearchKey,
                    charset: str | None) -> list[int]:
    """Ascending UIDs of the session's messages that match ``key``."""
    key = esearch.substitute_saved(key, sel.saved)
    rev2.check_search_key(s, key)
    try:
        searching.check_charset(charset)
    except searching.BadCharset:
        raise No(_BADCHARSET) from None
    folder = sel.folder
    matcher = searching.fields_matcher(key)
    if key.op == "ALL" or matcher is not None:
        # SORT/THREAD ... ALL, SEARCH SUBJECT x: no MessageInfo per message
        uids = _present(sel.uids, folder_columns(folder).uids)
        if matcher is None:
            return uids
        table = _table(s, sel)
        await table.get(folder, uids)
        rows = table.positions(uids)
        columns = searching.fields_columns(key)
        if len(columns) == 1:  # read for every message: derived in one pass first
            table.derive(columns, rows)
        return [u for u, r in zip(uids, rows, strict=True)
                if r >= 0 and matcher(table.row(r))]
    await dates_ready(folder)  # every MessageInfo below carries its date
    infos = [i for i in map(folder.get, sel.uids) if i is not None]
    seqs = {u: n for n, u in enumerate(sel.uids, 1)}
    header_table = _table(s, sel)
    found: list[int] = await searching.search(
        folder, infos, seqs, key, charset, sel.recent,
        fields=lambda uids: header_table.get(folder, uids))
    return found


def _present(uids: list[int], present: Sequence[int]) -> list[int]:
    """The session's ``uids`` (ascending) still in the folder (``present``, ascending):
    usually all of them, found with one comparison, not a set of 100k UIDs per
    command."""
    if len(uids) == len(present) and array("q", uids) == array("q", present):
        return list(uids)
    there = set(present)
    return [u for u in uids if u in there]


def _aligned(found: list[int], uids: Sequence[int], column: Sequence[Any],
             default: Any) -> list[Any]:
    """``column`` (position-aligned with the folder's ascending ``uids``) at each of
    ``found`` (ascending): the column itself when they are the same messages."""
    if len(found) == len(uids) and array("q", found) == array("q", uids):
        return list(column)
    out = []
    for u in found:
        i = bisect_left(uids, u)
        out.append(column[i] if i < len(uids) and uids[i] == u else default)
    return out


def _parse_saving(sel: SelectedMailbox, opts: frozenset[str] | None,
                  parse: Any) -> tuple[Any, parser.SearchKey]:
    """``parse()``'s (what else it parsed, key) with ``$`` made the saved result; with
    RETURN (SAVE) the saved result is emptied first, so a command that fails from here
    on (BAD or NO) leaves ``$`` empty (RFC 5182 2.1)."""
    saved = sel.saved
    if opts is not None and "SAVE" in opts:
        sel.saved = []
    charset, key = parse()
    return charset, esearch.substitute_saved(key, saved)


def _numbers(sel: SelectedMailbox, uids: list[int], by_uid: bool) -> list[int]:
    all_uids = sel.uids
    if by_uid or (all_uids and all_uids[-1] == len(all_uids)):
        return uids  # (ascending UIDs whose last is their count are 1..n)
    seqs = [sel.seq_of(u) for u in uids]
    return [n for n in seqs if n is not None]


def _number_line(head: bytes, nums: list[int], tail: bytes = b"") -> bytes:
    """``head``, the numbers and ``tail`` as one response line, written into one
    buffer (a join would first hold a bytes object per number: 100k of them)."""
    out = bytearray(head)
    for n in nums:
        out += b" %d" % n
    out += tail + b"\r\n"
    return bytes(out)


async def search(s: IMAPServer, cmd: parser.Command) -> bytes:
    sel = _selected(s)
    opts, args = esearch.parse_return(cmd.args)
    charset, key = _parse_saving(sel, opts, lambda: parser.parse_search(args))
    rev2.check_search_charset(s, charset)
    if opts is None and rev2.is_rev2(s):  # RFC 9051 6.4.4: ESEARCH, ALL by default
        opts = esearch.ReturnOptions({"ALL"})
    found = await _matching(s, sel, key, charset)
    nums = _numbers(sel, found, cmd.uid)
    # SEARCH MODSEQ (RFC 7162 3.1.5); with MIN/MAX alone, of those (RFC 4731 3.2).
    modseq = condstore.search_modseq(
        s, key, found if opts is None else esearch.saved_result(opts, found))
    if opts is None:
        tail = b"" if modseq is None else b" (MODSEQ %d)" % modseq
        s.send(_number_line(b"* SEARCH", nums, tail))
        return b"SEARCH completed"
    if "SAVE" in opts:
        sel.saved = esearch.saved_result(opts, found)
    if "UPDATE" in opts:  # CONTEXT=SEARCH (RFC 5267)
        context.start(s, sel, cmd.tag, cmd.uid, False, "COUNT" in opts, found,
                      lambda now: _matching(s, now, key, charset), opts.update_fetch)
    line = esearch.response(cmd.tag, cmd.uid, opts, nums)
    if modseq is not None and line:  # SAVE alone: no ESEARCH line to extend
        line = line[:-2] + b" MODSEQ %d\r\n" % modseq
    s.send(line)
    return b"SEARCH completed"


async def sort(s: IMAPServer, cmd: parser.Command) -> bytes:
    sel = _selected(s)
    opts, args = esearch.parse_return(cmd.args)

    def parse() -> tuple[tuple[list[tuple[str, bool]], str], parser.SearchKey]:
        if len(args) < 3:
            raise parser.ParseError(None, "SORT expects sort keys, a charset and search keys")
        criteria = sorting.parse_criteria(args[0])
        charset = parser.as_string(args[1], "charset").decode("ascii", "replace")
        return (criteria, charset), parser.parse_search(args[2:])[1]

    (criteria, charset), key = _parse_saving(sel, opts, parse)
    ordered = await _sorted(s, sel, key, charset, criteria)
    nums = _numbers(sel, ordered, cmd.uid)
    modseq = condstore.search_modseq(  # RFC 7162 3.1.9, 3.1.10; RFC 4731 3.2
        s, key, ordered if opts is None else esearch.saved_result(opts, ordered))
    if opts is None:
        tail = b"" if modseq is None else b" (MODSEQ %d)" % modseq
        s.send(_number_line(b"* SORT", nums, tail))
        return b"SORT completed"
    if "SAVE" in opts:
        sel.saved = esearch.saved_result(opts, ordered)
    if "UPDATE" in opts:  # CONTEXT=SORT (RFC 5267)
        context.start(s, sel, cmd.tag, cmd.uid, True, "COUNT" in opts, ordered,
                      lambda now: _sorted(s, now, key, charset, criteria), opts.update_fetch)
    line = esearch.response(cmd.tag, cmd.uid, opts, nums)
    if modseq is not None and line:
        line = line[:-2] + b" MODSEQ %d\r\n" % modseq
    s.send(line)
    return b"SORT completed"


async def _sorted(s: IMAPServer, sel: SelectedMailbox, key: parser.SearchKey,
                  charset: str | None, criteria: Any) -> list[int]:
    """UIDs of the matching messages in sort order, each key's values read as one
    column (of the header table, or of the folder's index)."""
    found = await _matching(s, sel, key, charset)
    table = _table(s, sel)
    rows: list[int] = []
    if any(name in sorting.HEADER_KEYS for name, _ in criteria):
        await table.get(sel.folder, found)
        rows = table.positions(found)
    names = {name for name, _ in criteria}
    sent = await _sent_dates(sel, table, rows, found) if "DATE" in names else []
    if "ARRIVAL" in names:
        await dates_ready(sel.folder)
    cols = folder_columns(sel.folder) if names & {"ARRIVAL", "SIZE"} else None

    def values(name: str) -> Sequence[Any]:
        if name == "SIZE":
            assert cols is not None
            return _aligned(found, cols.uids, cols.sizes, 0)
        if name == "ARRIVAL":
            assert cols is not None
            return _aligned(found, cols.uids, cols.dates, 0.0)
        if name == "DATE":
            return sent
        return table.values(sorting.FIELD[name], rows)

    order = sorting.sort_positions(len(found), criteria, values)
    return [found[i] for i in order]


async def _sent_dates(sel: SelectedMailbox, table: HeaderTable, rows: list[int],
                      found: list[int]) -> list[float]:
    """Each message's Date header, else its INTERNALDATE (SORT DATE, THREAD). Only the
    messages without a usable Date need their INTERNALDATE, so only theirs is read:
    not a stat of every file in a folder whose dates the store has not read yet."""
    sent = table.values("date", rows)
    missing = [i for i, d in enumerate(sent) if d is None]
    if missing:
        await dates_ready(sel.folder, [found[i] for i in missing])
        cols = folder_columns(sel.folder)
        uids, dates = cols.uids, cols.dates
        for i in missing:
            j = bisect_left(uids, found[i])
            sent[i] = dates[j] if j < len(uids) and uids[j] == found[i] else 0.0
    return sent


async def thread(s: IMAPServer, cmd: parser.Command) -> bytes:
    sel = _selected(s)
    if len(cmd.args) < 3:
        raise parser.ParseError(None, "THREAD expects an algorithm, a charset and search keys")
    algorithm = parser.as_string(cmd.args[0], "algorithm").decode("ascii", "replace").upper()
    if algorithm not in THREAD_ALGORITHMS:
        raise parser.ParseError(None, f"Unknown THREAD algorithm {algorithm}")
    charset = parser.as_string(cmd.args[1], "charset").decode("ascii", "replace")
    _, key = parser.parse_search(cmd.args[2:])
    found = await _matching(s, sel, key, charset)
    table = _table(s, sel)
    # The threads depend only on which messages take part (their fields never change),
    # so the last answer per algorithm is kept: a repeated THREAD only renumbers it.
    memo_key = (algorithm, tuple(found))
    memo = table.threads.get(algorithm)
    if memo is not None and memo[0] == memo_key:
        data = memo[1]
    else:
        await table.get(sel.folder, found)
        rows = table.positions(found)
        sent = await _sent_dates(sel, table, rows, found)
        # One Node per message; the message-ids and References chains are read one
        # message at a time as REFERENCES links them, not kept (issue 16: peak RSS).
        nodes = list(map(threading.Node, found, sent, table.values("base", rows),
                         table.values("reply", rows)))
        del sent
        if algorithm == "REFERENCES":
            tree = threading.references(nodes, table.iter_values("message_id", rows),
                                        table.iter_values("parents", rows))
        else:
            tree = threading.ordered_subject(nodes)
        del rows, nodes
        data = threading.format_threads(tree)
        del tree
        table.threads[algorithm] = (memo_key, data)
    uids = sel.uids
    if not cmd.uid and not (uids and uids[-1] == len(uids)):
        # (Ascending UIDs whose last is their count are 1..n: numbers as they are.)
        seqs = dict(zip(uids, range(1, len(uids) + 1), strict=True))
        data = _NUMBER.sub(lambda m: b"%d" % seqs[int(m.group())], data)
    s.send(b"* THREAD" + (b" " + data if data else b"") + b"\r\n")
    return b"THREAD completed"


HANDLERS = {
    "SEARCH": (SEL, search),
    "SORT": (SEL, sort),
    "THREAD": (SEL, thread),
}
