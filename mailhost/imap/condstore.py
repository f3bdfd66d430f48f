"""CONDSTORE and QRESYNC (RFC 7162): the commands they extend.

The store numbers every change (``IFolder.highest_modseq``, ``MessageInfo.modseq``,
``changed_since``, ``expunged_since``; see ``mailhost.store.modseq``); this module
is the protocol side. Its handlers take over SELECT/EXAMINE, FETCH and STORE (ENABLE asks ``enable``),
strip what RFC 7162 adds (SELECT parameters, FETCH and STORE modifiers, the MODSEQ
fetch item) and hand the rest to the RFC 3501 handlers, which take a few keyword
arguments for it (``pick``, ``modseq``). SEARCH MODSEQ and STATUS HIGHESTMODSEQ are
one line each in the parser, search and STATUS.

Per session: ``IMAPServer.enabled`` holds "CONDSTORE"/"QRESYNC" once a client enabled
them (QRESYNC only by ENABLE; CONDSTORE also by its first CONDSTORE-enabling command,
RFC 7162 3.1). The selected mailbox follows: ``SelectedMailbox.modseq`` puts MODSEQ in
every flag update, ``SelectedMailbox.vanished`` sends VANISHED instead of EXPUNGE.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mailhost.imap import commands_mailbox, commands_selected, encoding, parser
from mailhost.imap.responses import Bad, format_set
from mailhost.imap.rev2 import IMAP4REV2
from mailhost.imap.states import AUTH, SEL
from mailhost.store.interfaces import IFolder

if TYPE_CHECKING:
    from mailhost.imap.selected import SelectedMailbox
    from mailhost.imap.server import IMAPServer

CONDSTORE = "CONDSTORE"
QRESYNC = "QRESYNC"
#: Largest UID a sequence set may name (RFC 3501 nz-number).
MAX_UID = 2**32 - 1


def _follow(s: IMAPServer, sel: SelectedMailbox | None) -> None:
    if sel is not None:
        sel.modseq = CONDSTORE in s.enabled
        sel.vanished = QRESYNC in s.enabled


def enable_condstore(s: IMAPServer) -> None:
    """A CONDSTORE-enabling command ran (RFC 7162 3.1): from now on this session's
    flag updates carry MODSEQ. Enabled while a mailbox is selected, the client hears
    its HIGHESTMODSEQ at once."""
    if CONDSTORE in s.enabled:
        return
    s.enabled.add(CONDSTORE)
    sel = s.selected
    _follow(s, sel)
    if sel is not None:
        s.send(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % sel.folder.highest_modseq)


def enable(s: IMAPServer, names: Sequence[str]) -> list[str]:
    """ENABLE (RFC 5161, commands_auth) of these upper-cased names: CONDSTORE and
    QRESYNC (which implies CONDSTORE) are switched on; returns those of ``names``
    this module enabled, for ``* ENABLED``."""
    done: list[str] = []
    for name in names:
        if name not in (CONDSTORE, QRESYNC):
            continue
        if name == QRESYNC and QRESYNC not in s.enabled:
            s.enabled.add(QRESYNC)
            _follow(s, s.selected)
        if name == CONDSTORE or CONDSTORE not in s.enabled:
            enable_condstore(s)
        if name not in done:
            done.append(name)
    return done


def _uses_modseq(key: parser.SearchKey) -> bool:
    return key.op == "MODSEQ" or any(isinstance(k, parser.SearchKey) and _uses_modseq(k)
                                     for k in key.args)


def search_modseq(s: IMAPServer, key: parser.SearchKey, found: Sequence[int]) -> int | None:
    """For a SEARCH with a MODSEQ key (CONDSTORE-enabling): the highest modseq among
    the UIDs it found, for ``(MODSEQ n)`` (None: no MODSEQ key, or nothing found)."""
    if not _uses_modseq(key):
        return None
    enable_condstore(s)
    sel = s.selected
    if not found or sel is None:
        return None
    return max(map(sel.folder.modseq_of, found))


def _number(token: object, what: str, zero: bool = False) -> int:
    """A mod-sequence or UIDVALIDITY (63-bit, not the 32-bit parse_number)."""
    if not isinstance(token, parser.Atom) or not token.isdigit() or len(token) > 19:
        raise Bad(f"Invalid {what}")
    n = int(token)
    if n >= 2**63 or (n == 0 and not zero):
        raise Bad(f"Invalid {what}")
    return n


class QresyncParams:
    """SELECT's ``QRESYNC (uidvalidity modseq [known-uids [(seqs uids)]])``."""

    def __init__(self, token: object) -> None:
        if not isinstance(token, list) or not 2 <= len(token) <= 4:
            raise Bad("QRESYNC expects (uidvalidity modseq [known-uids [seq-match]])")
        self.uid_validity = _number(token[0], "UIDVALIDITY")
        self.modseq = _number(token[1], "mod-sequence")
        self.known: parser.SequenceSet | None = None
        #: The client's (sequence number, UID) pairs, in its order (RFC 7162 3.2.5.2).
        self.pairs: list[tuple[int, int]] = []
        if len(token) >= 3:
            if isinstance(token[2], list):
                if len(token) == 4:
                    raise Bad("QRESYNC: known-uids before seq-match-data")
                self.pairs = self.seq_match(token[2])
            else:
                self.known = parser.parse_sequence_set(token[2])
        if len(token) == 4:
            self.pairs = self.seq_match(token[3])

    @staticmethod
    def seq_match(token: object) -> list[tuple[int, int]]:
        """The pairs of ``(sequence-set uid-set)``; empty when either holds ``*`` or
        more than ``MAX_MATCH_PAIRS`` (the data is a hint the server may ignore)."""
        if not isinstance(token, list) or len(token) != 2:
            raise Bad("QRESYNC: seq-match-data is (sequence-set uid-set)")
        seqs, uids = parser.parse_sequence_set(token[0]), parser.parse_sequence_set(token[1])
        n = _count(seqs)
        if n != _count(uids):
            raise Bad("QRESYNC: seq-match-data sets differ in size")
        if not 0 < n <= MAX_MATCH_PAIRS:
            return []
        return list(zip(_numbers(seqs), _numbers(uids), strict=True))


#: Sequence match pairs used at most; a longer sample is ignored, as the RFC allows.
MAX_MATCH_PAIRS = 10_000


def _numbers(seqset: parser.SequenceSet) -> list[int]:
    """A set without ``*``, in the order written (ranges as written, a:b or b:a)."""
    out: list[int] = []
    for lo, hi in seqset.ranges:
        assert lo is not None and hi is not None
        out.extend(range(lo, hi + 1) if lo <= hi else range(lo, hi - 1, -1))
    return out


def known_floor(pairs: Sequence[tuple[int, int]], present: Sequence[int]) -> int:
    """RFC 7162 3.2.5.2: the UID up to which the client knows every expunge: that of
    the last pair, in the client's order, whose sequence number still holds its UID
    before the first pair that does not (0 if the first does not)."""
    floor = 0
    for seq, uid in pairs:
        if not 0 < seq <= len(present) or present[seq - 1] != uid:
            break
        floor = uid
    return floor


def _count(seqset: parser.SequenceSet) -> int:
    n = 0
    for lo, hi in seqset.ranges:
        if lo is None or hi is None:
            return -1  # '*': leave it
        n += abs(hi - lo) + 1
    return n


def _ranges(seqset: parser.SequenceSet | None, top: int) -> list[tuple[int, int]]:
    """The UID ranges of a set (None: 1:top), '*' as ``top``, merged and ascending."""
    if seqset is None:
        return [(1, top)] if top >= 1 else []
    out: list[tuple[int, int]] = []
    for lo, hi in seqset.ranges:
        a, b = (top if lo is None else lo), (top if hi is None else hi)
        out.append((min(a, b), max(a, b)))
    out.sort()
    merged: list[tuple[int, int]] = []
    for a, b in out:
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _in(ranges: list[tuple[int, int]], uid: int) -> bool:
    i = bisect.bisect_right(ranges, (uid, MAX_UID + 1)) - 1
    return i >= 0 and ranges[i][0] <= uid <= ranges[i][1]


def _render_ranges(ranges: list[tuple[int, int]]) -> bytes:
    return b",".join(b"%d" % a if a == b else b"%d:%d" % (a, b) for a, b in ranges)


def vanished_since(folder: IFolder, modseq: int, within: list[tuple[int, int]],
                   present: Sequence[int], floor: int = 0) -> bytes:
    """The UID set for ``VANISHED (EARLIER)``: what the folder expunged since
    ``modseq`` within ``within``; past its memory, every UID in ``within`` below
    UIDNEXT that ``present`` (ascending) lacks. So too for a modseq above the folder's
    HIGHESTMODSEQ: not one of ours (another server's on the same Maildir, which
    shares UIDVALIDITY with us; or from before a journal was lost). There, ``floor``
    (``known_floor`` of the client's sequence match data) cuts what the client is
    known to have seen: only UIDs above it are listed."""
    gone = folder.expunged_since(modseq) if modseq <= folder.highest_modseq else None
    if gone is not None:
        return format_set([u for u in gone if _in(within, u)])
    out: list[tuple[int, int]] = []
    top = folder.uid_next - 1
    for a, b in within:
        a, b = max(a, floor + 1), min(b, top)
        i = bisect.bisect_left(present, a)
        cur = a
        while cur <= b:
            nxt = present[i] if i < len(present) else b + 1
            if nxt > cur:
                out.append((cur, min(b, nxt - 1)))
            cur = nxt + 1
            i += 1
    return _render_ranges(out)


def _select_params(args: list) -> tuple[bool, QresyncParams | None]:
    """(CONDSTORE asked for, QRESYNC parameters) of SELECT/EXAMINE's parameter list."""
    if not args:
        return False, None
    if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
        raise Bad("SELECT expects a mailbox name and a parameter list")
    params, condstore, qresync = args[0], False, None
    i = 0
    while i < len(params):
        p = params[i]
        name = p.upper() if isinstance(p, parser.Atom) else ""
        if name == CONDSTORE:
            condstore = True
            i += 1
        elif name == QRESYNC and i + 1 < len(params):
            qresync = QresyncParams(params[i + 1])
            i += 2
        else:
            raise Bad("Unknown SELECT parameter")
    return condstore, qresync


async def _select(s: IMAPServer, cmd: parser.Command, readonly: bool) -> bytes:
    if not cmd.args:
        raise Bad(f"{cmd.name} expects a mailbox name")
    condstore, qresync = _select_params(cmd.args[1:])
    if qresync is not None and QRESYNC not in s.enabled:
        raise Bad("QRESYNC must be enabled first")
    if s.selected is not None and (QRESYNC in s.enabled or IMAP4REV2 in s.enabled):
        # RFC 7162 3.2.11 and RFC 9051 6.3.2: the end of the old mailbox's responses.
        s.send(b"* OK [CLOSED] Previous mailbox closed\r\n")
    if condstore:
        s.enabled.add(CONDSTORE)  # the SELECT's own HIGHESTMODSEQ says it
    plain = parser.Command(cmd.tag, cmd.name, cmd.uid, cmd.args[:1])
    text = await commands_mailbox._select(s, plain, readonly)
    sel = s.selected
    assert sel is not None
    _follow(s, sel)
    folder = sel.folder
    out = []
    if CONDSTORE in s.enabled:
        out.append(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % folder.highest_modseq)
    if qresync is not None and qresync.uid_validity == folder.uid_validity:
        out += _resync(sel, qresync)
    if out:
        s.send(b"".join(out))
    if condstore and qresync is None:
        return text.replace(b"completed", b"completed, CONDSTORE enabled")
    return text


def _resync(sel: SelectedMailbox, q: QresyncParams) -> list[bytes]:
    """VANISHED (EARLIER) and FETCH (UID FLAGS MODSEQ) for what changed since the
    client's modseq (RFC 7162 3.2.5)."""
    folder = sel.folder
    out = []
    top = folder.uid_next - 1
    gone = vanished_since(folder, q.modseq, _ranges(q.known, top), sel.uids,
                          known_floor(q.pairs, sel.uids))
    if gone:
        out.append(b"* VANISHED (EARLIER) " + gone + b"\r\n")
    # A modseq we never gave out (see vanished_since): every message is news.
    changed = folder.changed_since(q.modseq if q.modseq <= folder.highest_modseq else 0)
    for uid in changed:
        seq = sel.seq_of(uid)
        info = folder.get(uid)
        if seq is None or info is None:
            continue
        flags = info.flags | {"\\Recent"} if uid in sel.recent else info.flags
        out.append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n"
                   % (seq, uid, encoding.format_flags(flags), info.modseq))
    sel.forget_flags(changed)
    return out


async def select(s: IMAPServer, cmd: parser.Command) -> bytes:
    return await _select(s, cmd, readonly=False)


async def examine(s: IMAPServer, cmd: parser.Command) -> bytes:
    return await _select(s, cmd, readonly=True)


def _modifiers(token: object, allowed: tuple[str, ...]) -> dict[str, int | bool]:
    """A FETCH/STORE modifier list: ``{"CHANGEDSINCE": n, "VANISHED": True}`` etc."""
    if not isinstance(token, list) or not token:
        raise Bad("Invalid modifier list")
    out: dict[str, int | bool] = {}
    i = 0
    while i < len(token):
        t = token[i]
        name = t.upper() if isinstance(t, parser.Atom) else ""
        if name not in allowed or name in out:
            raise Bad("Unknown or repeated modifier")
        if name == "VANISHED":
            out[name] = True
            i += 1
            continue
        if i + 1 >= len(token):
            raise Bad(f"{name} needs a mod-sequence")
        out[name] = _number(token[i + 1], "mod-sequence", zero=name == "UNCHANGEDSINCE")
        i += 2
    return out


def _without_modseq(token: object) -> tuple[object, bool]:
    """FETCH's item argument with the MODSEQ item taken out; whether it was there."""
    if isinstance(token, parser.Atom) and token.upper() == "MODSEQ":
        return [], True
    if isinstance(token, list):
        rest = [t for t in token if not (isinstance(t, parser.Atom) and t.upper() == "MODSEQ")]
        return rest, len(rest) != len(token)
    return token, False


async def fetch(s: IMAPServer, cmd: parser.Command) -> bytes:
    if len(cmd.args) not in (2, 3):
        raise Bad("FETCH expects a sequence set, items and modifiers")
    spec, asked = _without_modseq(cmd.args[1])
    mods = _modifiers(cmd.args[2], ("CHANGEDSINCE", "VANISHED")) if len(cmd.args) == 3 else {}
    if "VANISHED" in mods and (not cmd.uid or QRESYNC not in s.enabled
                               or "CHANGEDSINCE" not in mods):
        raise Bad("VANISHED needs UID FETCH, QRESYNC enabled and CHANGEDSINCE")
    if spec == [] and asked:  # MODSEQ alone
        items: list = []
        if cmd.uid:
            items = [parser.FetchItem("UID")]
    else:
        items = parser.parse_fetch_items([spec])
    if asked or mods:
        enable_condstore(s)
    sel = commands_selected._selected(s)
    folder = sel.folder
    pick = None
    if "CHANGEDSINCE" in mods:
        since = int(mods["CHANGEDSINCE"])
        if since > folder.highest_modseq:
            since = 0  # never ours (see vanished_since): everything is news

        def pick(uids: list[int]) -> list[int]:
            if len(uids) < 64:
                return [u for u in uids if folder.modseq_of(u) > since]
            changed = set(folder.changed_since(since))  # one pass over the folder
            return [u for u in uids if u in changed]

        if "VANISHED" in mods:
            seqset = parser.parse_sequence_set(cmd.args[0])
            gone = vanished_since(folder, int(mods["CHANGEDSINCE"]),
                                  _ranges(seqset, folder.uid_next - 1),
                                  sel.uids)
            if gone:
                s.send(b"* VANISHED (EARLIER) " + gone + b"\r\n")
    modseq = bool(asked or mods) or (CONDSTORE in s.enabled
                                      and any(it.name == "FLAGS" for it in items))
    return await commands_selected.fetch(s, cmd, items=items, pick=pick, modseq=modseq)


async def store(s: IMAPServer, cmd: parser.Command) -> bytes:
    args = cmd.args
    if len(args) < 2 or not isinstance(args[1], list):
        if CONDSTORE in s.enabled:
            return await commands_selected.store(s, cmd, modseq=True)
        return await commands_selected.store(s, cmd)
    since = int(_modifiers(args[1], ("UNCHANGEDSINCE",))["UNCHANGEDSINCE"])
    enable_condstore(s)
    sel = commands_selected._writable(s, "STORE")
    folder = sel.folder
    modified: list[int] = []

    def pick(uids: list[int]) -> list[int]:
        ok: list[int] = []
        for u in uids:
            (ok if folder.modseq_of(u) <= since else modified).append(u)
        return ok

    plain = parser.Command(cmd.tag, cmd.name, cmd.uid, [args[0], *args[2:]])
    text = await commands_selected.store(s, plain, pick=pick, modseq=True)
    if not modified:
        return text
    nums = modified if cmd.uid else [n for n in map(sel.seq_of, modified) if n is not None]
    return b"[MODIFIED " + format_set(sorted(nums)) + b"] Conditional STORE failed"


HANDLERS = {
    "SELECT": (AUTH, select),
    "EXAMINE": (AUTH, examine),
    "FETCH": (SEL, fetch),
    "STORE": (SEL, store),
}
