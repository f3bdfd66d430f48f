"""SEARCH, SORT and THREAD (RFC 3501 6.4.4, RFC 5256), with ESEARCH, SEARCHRES, ESORT,
SORT=DISPLAY and WITHIN.

Each runs the search program (``search.search``) over the session's messages, header
keys answered from the folder's ``headerindex.HeaderTable`` (read once per folder,
then kept, so a second SORT or ``SEARCH SUBJECT`` opens no file), then sorts or
threads the result from the same table and the folder's index columns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mailhost.imap import condstore, context, esearch, parser, rev2
from mailhost.imap import search as searching
from mailhost.imap import sort as sorting
from mailhost.imap import thread as threading
from mailhost.imap.headerindex import Fields, HeaderTable
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
        present = set(folder_columns(folder).uids)
        uids = [u for u in sel.uids if u in present]
        if matcher is None:
            return uids
        known = await _table(s, sel).get(folder, uids)
        return [u for u in uids if (f := known.get(u)) is not None and matcher(f)]
    await dates_ready(folder)  # every MessageInfo below carries its date
    infos = [i for i in map(folder.get, sel.uids) if i is not None]
    seqs = {u: n for n, u in enumerate(sel.uids, 1)}
    header_table = _table(s, sel)
    found: list[int] = await searching.search(
        folder, infos, seqs, key, charset, sel.recent,
        fields=lambda uids: header_table.get(folder, uids))
    return found


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
    if by_uid:
        return uids
    seqs = [sel.seq_of(u) for u in uids]
    return [n for n in seqs if n is not None]


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
        s.send(b"* SEARCH" + b"".join(b" %d" % n for n in nums) + tail + b"\r\n")
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
        s.send(b"* SORT" + b"".join(b" %d" % n for n in nums) + tail + b"\r\n")
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
    """UIDs of the matching messages in sort order."""
    found = await _matching(s, sel, key, charset)
    fields: Mapping[int, Fields] = {}
    if any(name in sorting.HEADER_KEYS for name, _ in criteria):
        fields = await _table(s, sel).get(sel.folder, found)
    dates, sizes = await _index_maps(sel, criteria)
    return sorting.sort_uids(found, criteria, fields, dates, sizes)


async def _index_maps(sel: SelectedMailbox, criteria: Any) -> tuple[dict[int, float],
                                                                   dict[int, int]]:
    """INTERNALDATE and size by UID, when the sort program needs them."""
    names = {name for name, _ in criteria}
    if not names & {"ARRIVAL", "SIZE", "DATE"}:
        return {}, {}
    if names & {"ARRIVAL", "DATE"}:
        await dates_ready(sel.folder)
    cols = folder_columns(sel.folder)
    dates = dict(zip(cols.uids, cols.dates, strict=True)) \
        if names & {"ARRIVAL", "DATE"} else {}
    sizes = dict(zip(cols.uids, cols.sizes, strict=True)) if "SIZE" in names else {}
    return dates, sizes


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
        fields = await table.get(sel.folder, found)
        dates, _ = await _index_maps(sel, [("DATE", False)])
        items = []
        for pos, u in enumerate(found):
            f = fields.get(u)
            sent = f.date if f is not None and f.date is not None else dates.get(u, 0.0)
            items.append(threading.Item(u, pos, sent, f))
        if algorithm == "REFERENCES":
            tree = threading.references(items)
        else:
            tree = threading.ordered_subject(items)
        data = threading.format_threads(tree)
        del tree, items
        table.threads[algorithm] = (memo_key, data)
    if not cmd.uid:
        seqs = {u: b"%d" % n for n, u in enumerate(sel.uids, 1)}
        data = _NUMBER.sub(lambda m: seqs[int(m.group())], data)
    s.send(b"* THREAD" + (b" " + data if data else b"") + b"\r\n")
    return b"THREAD completed"


HANDLERS = {
    "SEARCH": (SEL, search),
    "SORT": (SEL, sort),
    "THREAD": (SEL, thread),
}
