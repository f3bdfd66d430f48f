"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 4): results that keep themselves current.

``SEARCH RETURN (UPDATE) ...`` (or ``SORT RETURN (UPDATE) ...``) answers as usual and
then keeps the search: whenever the selected mailbox changes (this session's STORE or
APPEND, another session, an SMTP delivery, Dovecot on the same Maildir) the session
runs it again and tells the client how the result moved, in an ESEARCH line tagged
like the original command::

    * ESEARCH (TAG "A1") UID REMOVEFROM (2 7) ADDTO (4 12:13)

For SEARCH the position is 0 (the result is a set). For SORT it is the 1-based place
in the sorted result, and the updates are ordered so that a client applying them one
after the other, left to right, gets the new result (RFC 5267 4.3): every REMOVEFROM
first, numbered as the list stands after the ones before it, then every ADDTO in
ascending final position, each run of neighbours in one ADDTO. Updates use the
numbers the client has: a new message joins after its EXISTS, and a message expunged
keeps its number until its EXPUNGE is sent. An expunged message leaves a result with a REMOVEFROM like any other change (RFC 5267
4.3 and the example of 4.3.4): a UID result after the EXPUNGE or VANISHED (UIDs stay
valid), a sequence-number result just before it, with the numbers the client still
has (``removals_before_expunge``, 4.3.4's MUST). ``CANCELUPDATE "tag"`` stops one; selecting
another mailbox stops all. At most ``MAX_CONTEXTS`` run at once per session; one more
gets ``* NO [NOUPDATE "tag"]`` and an ordinary answer.

The search is run again in full when the folder's HIGHESTMODSEQ moved (any append,
flag change or expunge): O(messages) per change and context, like the first search
(the header table makes text keys cheap after the first run).
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.logger import Logger

from mailhost.imap import parser
from mailhost.imap.encoding import quote
from mailhost.imap.responses import Bad, No, format_set
from mailhost.imap.states import SEL
from mailhost.store.interfaces import StoreError

if TYPE_CHECKING:
    from mailhost.imap.selected import SelectedMailbox
    from mailhost.imap.server import IMAPServer

log = Logger()

#: Update contexts one session may keep at once (Dovecot keeps 10).
MAX_CONTEXTS = 10

#: ``(selected mailbox) -> the result now``, in result order, as UIDs. It must not hold
#: the mailbox itself: contexts live in a WeakKeyDictionary keyed by it.
Rerun = Callable[["SelectedMailbox"], Awaitable[list[int]]]


@dataclass
class Context:
    """One ``RETURN (UPDATE)`` search of the selected mailbox."""

    tag: str
    uid: bool  # UID SEARCH/SORT: updates carry UIDs
    sorted: bool  # SORT: positions matter
    count: bool  # COUNT was asked for: updates carry the new COUNT too
    rerun: Rerun
    result: list[int] = field(default_factory=list)
    modseq: int = 0  # the folder's HIGHESTMODSEQ the result is current for
    size: int = 0  # EXISTS when it was computed
    #: ``UPDATE (fetch-att ...)`` (RFC 5465 7): FETCH these for new messages it adds.
    fetch: tuple[parser.FetchItem, ...] = ()
    last_uid: int = 0  # the mailbox's highest UID when the result was computed


_CONTEXTS: weakref.WeakKeyDictionary[SelectedMailbox, dict[str, Context]] = \
    weakref.WeakKeyDictionary()


def contexts(sel: SelectedMailbox) -> dict[str, Context]:
    """The update contexts of one selected mailbox (they end with it)."""
    found = _CONTEXTS.get(sel)
    if found is None:
        found = _CONTEXTS[sel] = {}
    return found


def start(s: IMAPServer, sel: SelectedMailbox, tag: str, uid: bool, sorted_: bool,
          count: bool, result: list[int], rerun: Rerun,
          fetch: tuple[parser.FetchItem, ...] = ()) -> bool:
    """Keep a search that asked for UPDATE; False (and ``* NO [NOUPDATE]``) if not.
    ``fetch``: UPDATE's FETCH attributes (RFC 5465 7)."""
    live = contexts(sel)
    if tag in live:
        raise Bad("A search with this tag is already being updated")
    if len(live) >= MAX_CONTEXTS:
        s.send(b"* NO [NOUPDATE " + quote(tag) + b"] Too many updating searches\r\n")
        return False
    live[tag] = Context(tag, uid, sorted_, count, rerun, list(result),
                        sel.folder.highest_modseq, sel.exists, fetch,
                        sel.uids[-1] if sel.uids else 0)
    return True


def diff_set(old: list[int], new: list[int]) -> tuple[list[int], list[int]]:
    """(removed, added) between two unordered results, each ascending."""
    before, after = set(old), set(new)
    return sorted(before - after), sorted(after - before)


def diff_sorted(old: list[int], new: list[int]) -> list[tuple[str, int, list[int]]]:
    """The REMOVEFROM and ADDTO steps that turn ``old`` into ``new`` (RFC 5267 4.3).

    Messages kept keep their relative order (sort keys never change), so removing
    what went, left to right, then inserting what came at its final position, in
    ascending order, rebuilds ``new`` exactly. Each step is ``(kind, position, run)``.
    """
    after = set(new)
    steps: list[tuple[str, int, list[int]]] = []
    pos = 0  # position in the list as it stands after the removals so far
    for u in old:
        if u in after:
            pos += 1
        elif steps and steps[-1][0] == "REMOVEFROM" and steps[-1][1] == pos + 1:
            steps[-1][2].append(u)
        else:
            steps.append(("REMOVEFROM", pos + 1, [u]))
    before = set(old)
    last = -2
    for i, u in enumerate(new):
        if u in before:
            continue
        if steps and steps[-1][0] == "ADDTO" and last == i - 1:
            steps[-1][2].append(u)
        else:
            steps.append(("ADDTO", i + 1, [u]))
        last = i
    return steps


def apply_steps(old: list[int], steps: list[tuple[str, int, list[int]]]) -> list[int]:
    """What a client does with the steps (the tests check ``diff_sorted`` with it)."""
    out = list(old)
    for kind, pos, run in steps:
        if kind == "REMOVEFROM":
            del out[pos - 1:pos - 1 + len(run)]
        else:
            out[pos - 1:pos - 1] = run
    return out


def removals_before_expunge(s: IMAPServer) -> None:
    """Before the EXPUNGE lines go: ``REMOVEFROM`` for the members of sequence-number
    contexts about to be expunged, numbered as the client still numbers them (RFC 5267
    4.3.4: "MUST be sent prior to the expunge notification itself"; Dovecot's imaptest
    search-context-update checks it). UID contexts hear of it after (``update_line``)."""
    sel = s.selected
    if sel is None or sel not in _CONTEXTS:
        return
    going = sel.expunges_pending
    if not going:
        return
    for ctx in list(contexts(sel).values()):
        if ctx.uid or not going.intersection(ctx.result):
            continue
        kept = [u for u in ctx.result if u not in going or sel.seq_of(u) is None]
        if ctx.sorted:
            steps = diff_sorted(ctx.result, kept)
        else:
            steps = [("REMOVEFROM", 0, [u for u in ctx.result if u not in kept])]
        out = [b"* ESEARCH (TAG " + quote(ctx.tag) + b")"]
        for kind, pos, run in steps:
            nums = [n for n in map(sel.seq_of, run) if n is not None]
            out.append(b"%s (%d %s)" % (kind.encode("ascii"), pos,
                                         format_set(nums if ctx.sorted else sorted(nums))))
        if ctx.count:
            out.append(b"COUNT %d" % len(kept))
        ctx.result = kept
        s.send(b" ".join(out) + b"\r\n")


async def send_updates(s: IMAPServer, allow_seqs: bool = True) -> None:
    """Run every context whose folder changed and send what moved, in the numbers the
    client has: a message it has not heard EXISTS for waits, one expunged but not yet
    reported keeps its number (so sequence-number contexts go during any command, as
    Dovecot's do; ``allow_seqs`` is kept for callers and no longer needed)."""
    sel = s.selected
    if sel is None or sel not in _CONTEXTS:
        return
    for ctx in list(contexts(sel).values()):
        if ctx.modseq == sel.folder.highest_modseq and ctx.size == sel.exists:
            continue
        ctx.modseq, ctx.size = sel.folder.highest_modseq, sel.exists
        try:
            new = await ctx.rerun(sel)
        except Exception:  # the folder went away, a bug: the command's reply still goes
            log.failure("CONTEXT: updating search {tag} failed; dropped", tag=ctx.tag)
            contexts(sel).pop(ctx.tag, None)
            continue
        if s.selected is not sel or contexts(sel).get(ctx.tag) is not ctx:
            return  # unselected or cancelled meanwhile
        present = set(sel.uids)
        new = [u for u in new if u in present]  # no ADDTO before its EXISTS (4.3.3)
        line = update_line(ctx, sel, new)
        if line and ctx.fetch:  # RFC 5465 7: FETCH of new members, before the ESEARCH
            known = set(ctx.result)
            arrived = sorted(u for u in new if u > ctx.last_uid and u not in known)
            if arrived:
                await push_fetch(s, arrived, ctx.fetch)
        ctx.result = new
        ctx.last_uid = sel.uids[-1] if sel.uids else 0
        if line:
            s.send(line)


async def push_fetch(s: IMAPServer, uids: list[int], items: Sequence[parser.FetchItem]) -> None:
    """An unsolicited ``* n FETCH`` of these messages (NOTIFY's MessageNew and UPDATE's
    attributes, RFC 5465 5.2 and 7). Looking must not change \\Seen behind the client's
    back: BODY[] is read as BODY.PEEK[]. A failure is logged; the command goes on."""
    from mailhost.imap import commands_selected

    peek = [parser.FetchItem("BODY.PEEK", it.section, it.partial, it.lazy)
            if it.name == "BODY" and it.section is not None else it for it in items]
    cmd = parser.Command("*", "FETCH", True, [parser.Atom(format_set(uids).decode("ascii"))])
    try:
        await commands_selected.fetch(s, cmd, items=peek)
    except (StoreError, Bad, No, OSError) as e:
        log.info("unsolicited FETCH failed: {e}", e=str(e))
    except Exception:  # a bug: the command's tagged reply must still go out
        log.failure("unsolicited FETCH failed")


def update_line(ctx: Context, sel: SelectedMailbox, new: list[int]) -> bytes:
    """The ESEARCH line for a result that went from ``ctx.result`` to ``new``; b"" if
    nothing moved that the client does not know already."""
    if ctx.uid:  # UIDs outlive an expunge: it is news like any other (RFC 5267 4.3)
        old = ctx.result
    else:  # a sequence number is gone with its EXPUNGE, which the client was told of
        present = set(sel.uids)
        old = [u for u in ctx.result if u in present]
    if ctx.sorted:
        steps = diff_sorted(old, new)
    else:
        removed, added = diff_set(old, new)
        steps = [(kind, 0, run) for kind, run in (("REMOVEFROM", removed), ("ADDTO", added))
                 if run]
    if not steps:
        return b""
    out = [b"* ESEARCH (TAG " + quote(ctx.tag) + b")"]
    if ctx.uid:
        out.append(b"UID")
    for kind, pos, run in steps:
        nums = run if ctx.uid else [n for n in map(sel.seq_of, run) if n is not None]
        if not ctx.sorted:
            nums.sort()
        out.append(b"%s (%d %s)" % (kind.encode("ascii"), pos, format_set(nums)))
    if ctx.count:
        out.append(b"COUNT %d" % len(new))
    return b" ".join(out) + b"\r\n"


async def cancelupdate(s: IMAPServer, cmd: parser.Command) -> bytes:
    """CANCELUPDATE "tag" ... (RFC 5267 4.2): stop updating these searches."""
    if not cmd.args:
        raise Bad("CANCELUPDATE expects tags")
    assert s.selected is not None
    live = contexts(s.selected)
    tags = [parser.as_string(t, "tag").decode("ascii", "replace") for t in cmd.args]
    unknown = [t for t in tags if t not in live]
    if unknown:
        raise Bad("No updating search has tag " + unknown[0])
    for t in tags:
        del live[t]
    return b"CANCELUPDATE completed"


HANDLERS = {"CANCELUPDATE": (SEL, cancelupdate)}
