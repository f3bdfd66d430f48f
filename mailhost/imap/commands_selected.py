"""Selected-state commands (RFC 3501 6.4) plus UIDPLUS, MOVE and UNSELECT (SEARCH, SORT
and THREAD are in ``commands_search``).

FETCH renders through ``fetch.fetch_message`` except for index-only items (UID,
FLAGS, RFC822.SIZE, INTERNALDATE), which are formatted here straight from the
in-memory index: ``UID FETCH 1:* (UID FLAGS)`` on 100k messages opens no file and
creates no per-message Deferred. Bodies stream with backpressure.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mailhost.imap import encoding, parser
from mailhost.imap.commands_mailbox import mailbox_name
from mailhost.imap.output import stream_message
from mailhost.imap.quota import check_copy
from mailhost.imap.responses import Bad, No, format_set
from mailhost.imap.rev2 import utf8_items, utf8_names
from mailhost.imap.selected import dates_ready, folder_columns
from mailhost.imap.states import SEL
from mailhost.store.interfaces import MessageInfo, NoSuchFolder, NoSuchMessage

if TYPE_CHECKING:
    from mailhost.imap.selected import SelectedMailbox
    from mailhost.imap.server import IMAPServer

INDEX_ITEMS = frozenset({"UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE"})
#: Index-only FETCH lines written per transport.write.
BATCH = 512


def _selected(s: IMAPServer) -> SelectedMailbox:
    assert s.selected is not None
    return s.selected


def _writable(s: IMAPServer, what: str) -> SelectedMailbox:
    sel = _selected(s)
    if sel.readonly:
        raise No(f"[READ-ONLY] {what} not allowed: mailbox is read-only")
    return sel


async def check(s: IMAPServer, cmd: parser.Command) -> bytes:
    if cmd.args:
        raise Bad("CHECK takes no arguments")
    await _selected(s).folder.refresh()
    return b"CHECK completed"


async def close(s: IMAPServer, cmd: parser.Command) -> bytes:
    if cmd.args:
        raise Bad("CLOSE takes no arguments")
    sel = _selected(s)
    s.unselect()
    if not sel.readonly:
        await sel.folder.expunge()  # silently: no EXPUNGE responses (RFC 3501 6.4.2)
    return b"CLOSE completed"


async def unselect(s: IMAPServer, cmd: parser.Command) -> bytes:
    if cmd.args:
        raise Bad("UNSELECT takes no arguments")
    s.unselect()
    return b"UNSELECT completed"


async def expunge(s: IMAPServer, cmd: parser.Command) -> bytes:
    sel = _writable(s, "EXPUNGE")
    if cmd.uid:
        if len(cmd.args) != 1:
            raise Bad("UID EXPUNGE expects a UID set")
        uids = sel.resolve(parser.parse_sequence_set(cmd.args[0]), uid=True)
        removed = await sel.folder.expunge(uids) if uids else []
    else:
        if cmd.args:
            raise Bad("EXPUNGE takes no arguments")
        removed = await sel.folder.expunge()
    sel.note_expunged(removed)
    if removed and "QRESYNC" in s.enabled:  # RFC 7162 3.2.7 and 3.2.9: a MUST
        return b"[HIGHESTMODSEQ %d] EXPUNGE completed" % sel.folder.highest_modseq
    return b"EXPUNGE completed"


class _IndexRenderer:
    """Formats index-only FETCH lines; flag lists are memoised per distinct flag set
    (a mailbox has few), which keeps 100k-message FETCHes cheap."""

    def __init__(self, items: list, modseq_of: Callable[[int], int] | None = None) -> None:
        self.names = [it.name for it in items]
        self.modseq_of = modseq_of
        if modseq_of is not None:
            self.names.append("MODSEQ")  # CONDSTORE (mailhost.imap.condstore)
        self._flags: dict[frozenset[str], bytes] = {}
        self._recent_flags: dict[frozenset[str], bytes] = {}
        #: ``line(seq, uid, flags, size, date, recent)``: one message's FETCH line.
        self.line: Callable[[int, int, frozenset[str], int, float, bool], bytes] = self._line
        if self.names == ["UID", "FLAGS"]:
            self.line = self._uid_flags  # what every client syncs with: one format op

    def _uid_flags(self, seq: int, uid: int, flags: frozenset[str], size: int, date: float,
                   recent: bool) -> bytes:
        memo = self._recent_flags if recent else self._flags
        out = memo.get(flags) or self.flags(flags, recent)
        return b"* %d FETCH (UID %d %s)\r\n" % (seq, uid, out)

    def uid_flags_bytes(self, first_seq: int, uids: Sequence[int],
                        flags: Sequence[frozenset[str]]) -> bytes:
        """``UID FLAGS`` lines for consecutive sequence numbers from ``first_seq``, none
        of them \\Recent: one format operation per line and no call."""
        memo = self._flags
        for fs in set(flags) - memo.keys():
            self.flags(fs, False)
        return b"".join([b"* %d FETCH (UID %d %s)\r\n" % (seq, uid, memo[fs])
                         for seq, uid, fs in zip(range(first_seq, first_seq + len(uids)),
                                                 uids, flags, strict=True)])

    def flags(self, flags: frozenset[str], recent: bool) -> bytes:
        memo = self._recent_flags if recent else self._flags
        out = memo.get(flags)
        if out is None:
            out = memo[flags] = b"FLAGS " + encoding.format_flags(
                flags | {"\\Recent"} if recent else flags)
        return out

    def _line(self, seq: int, uid: int, flags: frozenset[str], size: int, date: float,
              recent: bool) -> bytes:
        parts = []
        for name in self.names:
            if name == "UID":
                parts.append(b"UID %d" % uid)
            elif name == "FLAGS":
                parts.append(self.flags(flags, recent))
            elif name == "RFC822.SIZE":
                parts.append(b"RFC822.SIZE %d" % size)
            elif name == "MODSEQ":
                assert self.modseq_of is not None
                parts.append(b"MODSEQ (%d)" % self.modseq_of(uid))
            else:
                parts.append(b"INTERNALDATE " + encoding.format_datetime(date))
        return b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts))


def _index_batches(sel: SelectedMailbox, uids: list[int], render: _IndexRenderer):
    """(FETCH lines of up to BATCH messages, how many of them the folder no longer has)
    for ascending ``uids``, from the folder's index columns: no lookup and no
    MessageInfo per message. When the request, the session's numbering and the folder
    agree (``FETCH 1:*`` with nothing pending, the usual sync) the columns are
    rendered as they are; otherwise the three are merged in one pass."""
    cuids, cflags, _, csizes, cdates = folder_columns(sel.folder)
    seq_uids, recent = sel.uids, sel.recent
    # A store may read dates lazily (a stat each): touch them only when asked for.
    dated = "INTERNALDATE" in render.names
    n = len(uids)
    if n == len(seq_uids) == len(cuids) and uids == seq_uids and \
            (isinstance(cuids, list) and cuids == uids or array("q", uids) == cuids):
        uid_flags = (render.uid_flags_bytes if render.names == ["UID", "FLAGS"] and not recent
                     else None)
        for start in range(0, n, BATCH):
            end = min(n, start + BATCH)
            if uid_flags is not None:
                yield uid_flags(start + 1, uids[start:end], cflags[start:end]), 0
                continue
            yield b"".join([
                render.line(i + 1, u, cflags[i], csizes[i], cdates[i] if dated else 0.0,
                            u in recent)
                for i, u in zip(range(start, end), uids[start:end], strict=True)]), 0
        return
    line = render.line
    batch: list[bytes] = []
    missing = 0
    i = j = 0
    n_c, n_s = len(cuids), len(seq_uids)
    for u in uids:
        while j < n_s and seq_uids[j] < u:
            j += 1
        while i < n_c and cuids[i] < u:
            i += 1
        if i < n_c and cuids[i] == u:
            batch.append(line(j + 1, u, cflags[i], csizes[i], cdates[i] if dated else 0.0,
                              u in recent))
        else:
            missing += 1
        if len(batch) >= BATCH:
            yield b"".join(batch), missing
            batch, missing = [], 0
    if batch or missing:
        yield b"".join(batch), missing


async def fetch(s: IMAPServer, cmd: parser.Command, items: list | None = None,
                pick: Callable[[list[int]], list[int]] | None = None,
                modseq: bool = False) -> bytes:
    """FETCH; CONDSTORE's handler (``condstore.fetch``) passes the items it parsed,
    ``pick`` (CHANGEDSINCE: which of the named UIDs to answer for) and ``modseq``
    (add MODSEQ to every line)."""
    sel = _selected(s)
    if items is None:
        if len(cmd.args) != 2:
            raise Bad("FETCH expects a sequence set and items")
        items = parser.parse_fetch_items(cmd.args[1:])
    seqset = parser.parse_sequence_set(cmd.args[0])
    uids = sel.resolve(seqset, cmd.uid)
    if pick is not None:
        uids = pick(uids)
    if cmd.uid and not any(it.name == "UID" for it in items):
        items = [parser.FetchItem("UID"), *items]
    items = utf8_items(s, items)
    folder = sel.folder
    index_only = all(it.name in INDEX_ITEMS for it in items)
    if not index_only or any(it.name == "INTERNALDATE" for it in items):
        await dates_ready(folder, uids)  # no stat per message on the reactor below
    if any(it.name == "SAVEDATE" for it in items):
        await folder.save_dates(uids)  # RFC 8514: read in one pass, kept for below
    if not index_only:
        from mailhost.imap import fetch as fetching
    if not index_only and not sel.readonly and fetching.needs_seen(items):
        unseen = [u for u in uids
                  if (i := folder.get(u)) is not None and "\\Seen" not in i.flags]
        if unseen:
            await folder.set_flags(unseen, ["\\Seen"], "add")
            if any(it.name == "FLAGS" for it in items):
                sel.forget_flags(unseen)  # this FETCH shows them; no second update
    missing = False
    if index_only:
        render = _IndexRenderer(items, folder.modseq_of if modseq else None)
        for data, gone in _index_batches(sel, uids, render):
            missing = missing or gone > 0
            if data:
                s.send(data)
                await s.drain()
    else:
        for u in uids:
            info = folder.get(u)
            if info is None or not await _fetch_one(s, sel, info, items, fetching, modseq):
                missing = True
            await s.drain()
            if not s.alive:
                break
    if missing:
        # Like Dovecot 2.3 (cmd-fetch.c): the data of what still exists, then OK with
        # the RFC 5530 code (RFC 2180 4.1.3), not NO: a FETCH that ends in NO reads as a
        # failed command to clients and load tools, while nothing failed - another
        # session expunged. The EXPUNGE follows at the next point RFC 3501 7.4.1 allows.
        return b"[EXPUNGEISSUED] Some messages were already expunged"
    return b"FETCH completed"


def _as_seen(sel: SelectedMailbox, info: MessageInfo) -> MessageInfo:
    """``info`` with this session's \\Recent (RFC 3501 2.3.2: the session that was
    first told of a message has it), not the store's: the store's claim takes the
    message out of its recent set as this session reports it."""
    recent = info.uid in sel.recent
    return info if info.recent == recent else replace(info, recent=recent)


async def _fetch_one(s: IMAPServer, sel: SelectedMailbox, info: Any, items: list,
                     fetching: Any, modseq: bool = False) -> bool:
    opened: list = []
    info = _as_seen(sel, info)
    try:
        for attempt in range(2):
            pieces = await fetching.fetch_message(sel.folder, info, items)
            for p in pieces:
                if not isinstance(p, bytes | bytearray):
                    opened.append(await p.open())
            fresh = sel.folder.get(info.uid)
            if fresh is None:
                raise NoSuchMessage(info.uid)
            if fresh.flags == info.flags or attempt:
                break
            # Opening the file found that another program had changed its flags (a
            # Maildir rename): answer with what is true now.
            for f in opened:
                f.close()
            opened, info = [], _as_seen(sel, fresh)
    except (NoSuchMessage, FileNotFoundError):
        for f in opened:
            f.close()
        return False
    files = iter(opened)
    try:
        seq = sel.seq_of(info.uid)
        if seq is None:  # no longer in this session's numbering: answer as for a gone one
            return False
        # The whole line is held and written once (a big literal streams in between).
        out = [b"* %d FETCH (" % seq]
        for p in pieces:
            if isinstance(p, bytes | bytearray):
                out.append(bytes(p))
            else:
                out.append(p.prefix)
                await stream_message(next(files), p.length, s.send, s.gate, s.resetTimeout,
                                     keep_nul=p.keep_nul, out=out)
        if modseq:
            out.append(b" MODSEQ (%d)" % sel.folder.modseq_of(info.uid))
        out.append(b")\r\n")
        s.send(b"".join(out))
    finally:
        for f in opened:
            f.close()
    return True


async def store(s: IMAPServer, cmd: parser.Command,
                pick: Callable[[list[int]], list[int]] | None = None,
                modseq: bool = False) -> bytes:
    """STORE; CONDSTORE's handler (``condstore.store``) passes ``pick`` (UNCHANGEDSINCE:
    which of the named UIDs to change) and ``modseq`` (MODSEQ in the FETCH lines, sent
    even for .SILENT, RFC 7162 3.1.3), with its modifier already taken out of the args."""
    sel = _writable(s, "STORE")
    if len(cmd.args) < 3:
        raise Bad("STORE expects a sequence set, an item and flags")
    seqset = parser.parse_sequence_set(cmd.args[0])
    mode, silent, flags = parser.parse_store(cmd.args[1:])
    flags = [f for f in flags if f != "\\Recent"]
    uids = sel.resolve(seqset, cmd.uid)
    if pick is not None:
        uids = pick(uids)
    if not uids:
        return b"STORE completed"
    infos = await sel.folder.set_flags(uids, flags, mode)
    sel.forget_flags(i.uid for i in infos)
    if mode != "remove":
        sel.note_keywords(flags)
    out = sel.keyword_updates()  # a new keyword: FLAGS before any FETCH shows it
    if modseq:
        for i in infos:
            seq = sel.seq_of(i.uid)
            if seq is not None:
                fl = i.flags | {"\\Recent"} if i.uid in sel.recent else i.flags
                shown = b"" if silent else b" FLAGS " + encoding.format_flags(fl)
                out.append(b"* %d FETCH (UID %d%s MODSEQ (%d))\r\n"
                           % (seq, i.uid, shown, i.modseq))
    elif not silent:
        for i in infos:
            seq = sel.seq_of(i.uid)
            if seq is None:
                continue
            fl = i.flags | {"\\Recent"} if i.uid in sel.recent else i.flags
            if cmd.uid:
                out.append(b"* %d FETCH (UID %d FLAGS %s)\r\n"
                           % (seq, i.uid, encoding.format_flags(fl)))
            else:
                out.append(b"* %d FETCH (FLAGS %s)\r\n" % (seq, encoding.format_flags(fl)))
    if out:
        s.send(b"".join(out))
    return b"STORE completed"


async def _target(s: IMAPServer, cmd: parser.Command) -> tuple[list[int], Any]:
    if len(cmd.args) != 2:
        raise Bad(f"{cmd.name} expects a sequence set and a mailbox name")
    sel = _selected(s)
    seqset = parser.parse_sequence_set(cmd.args[0])
    name = mailbox_name(cmd.args[1], utf8_names(s))
    uids = sel.resolve(seqset, cmd.uid)
    try:
        dest = await s.account.open_folder(name)
    except NoSuchFolder:
        raise No("[TRYCREATE] Mailbox does not exist") from None
    return uids, dest


def _copyuid(dest: Any, pairs: list[tuple[int, int]]) -> bytes:
    pairs = sorted(pairs)
    return b"[COPYUID %d %s %s]" % (dest.uid_validity, format_set([p[0] for p in pairs]),
                                    format_set([p[1] for p in pairs]))


async def copy(s: IMAPServer, cmd: parser.Command) -> bytes:
    uids, dest = await _target(s, cmd)
    if not uids:
        return b"COPY completed"
    await check_copy(s.account, _selected(s).folder, uids)
    pairs = await _selected(s).folder.copy(uids, dest)
    if not pairs:
        return b"COPY completed"
    return _copyuid(dest, pairs) + b" COPY completed"


async def move(s: IMAPServer, cmd: parser.Command) -> bytes:
    sel = _writable(s, "MOVE")
    uids, dest = await _target(s, cmd)
    if not uids:
        return b"MOVE completed"
    if dest is sel.folder:
        pairs, moved = await _move_within(sel, uids)
    else:
        pairs = await sel.folder.move(uids, dest)
        moved = [p[0] for p in pairs]
    if pairs:
        s.send(b"* OK " + _copyuid(dest, pairs) + b" Moved\r\n")
        sel.note_expunged(moved)
    return b"MOVE completed"


async def _move_within(sel: SelectedMailbox,
                       uids: list[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """MOVE to the selected mailbox itself: RFC 6851 defines MOVE as COPY then expunge
    of the originals, which is legal here; each message comes back with a new UID.
    The store's move is a rename into another folder, so this is copy, \\Deleted on
    the originals only (this session reports no FETCH for them), expunge them.
    Returns the (old, new) UID pairs and the originals expunged."""
    folder = sel.folder
    pairs = await folder.copy(uids, folder)
    originals = [p[0] for p in pairs]
    if not originals:
        return pairs, []
    await folder.set_flags(originals, ["\\Deleted"], "add")
    sel.forget_flags(originals)
    return pairs, await folder.expunge(originals)


HANDLERS = {
    "CHECK": (SEL, check),
    "CLOSE": (SEL, close),
    "UNSELECT": (SEL, unselect),
    "EXPUNGE": (SEL, expunge),
    "FETCH": (SEL, fetch),
    "STORE": (SEL, store),
    "COPY": (SEL, copy),
    "MOVE": (SEL, move),
}
