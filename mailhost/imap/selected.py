"""The selected mailbox of one IMAP session: its own seq<->UID map and pending changes.

Every session keeps its own view of the folder. Changes made by other sessions, by
SMTP delivery or by other programs sharing the Maildir (the store watches a folder
while it has listeners) arrive through ``IFolderListener`` at any time, but RFC 3501 lets the
server announce them only at certain points and never renumber messages under a
command in progress. So the listener only *queues*; ``pending_updates`` turns the
queue into untagged EXPUNGE/EXISTS/FETCH lines when the protocol says it is allowed.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from twisted.logger import Logger
from zope.interface import implementer

from mailhost.imap.encoding import format_flags
from mailhost.imap.parser import SequenceSet
from mailhost.imap.responses import format_set
from mailhost.store.interfaces import Columns, IFolder, IFolderListener, IIndexedFolder, MessageInfo

log = Logger()


def folder_columns(folder: IFolder) -> Columns:
    """(uids, flags, recent, sizes, dates) of every message, position-aligned and in UID
    order. A store with a compact index (``IIndexedFolder``) offers ``columns()``, so a
    100k-message SELECT or FETCH builds no MessageInfo per message; others fall back to
    ``messages()``."""
    if IIndexedFolder.providedBy(folder):
        return folder.columns()
    infos = folder.messages()
    return Columns([i.uid for i in infos], [i.flags for i in infos], [i.recent for i in infos],
                   [i.size for i in infos], [i.internal_date for i in infos])


async def dates_ready(folder: IFolder, uids: Iterable[int] | None = None) -> None:
    """Wait until the folder knows the dates of these messages (all if None). A store
    that reads dates lazily (``IIndexedFolder``) offers ``fill_dates()`` to read them
    in bulk off the reactor, instead of one stat per message as they are asked for."""
    if IIndexedFolder.providedBy(folder):
        await folder.fill_dates(uids)


#: The system flags, in the order FLAGS and PERMANENTFLAGS list them.
FLAG_ORDER = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


class BadSequence(ValueError):
    """A sequence number beyond the mailbox (RFC 3501: BAD)."""


@implementer(IFolderListener)
class SelectedMailbox:
    """Implements: IFolderListener. One session's view of one folder."""

    def __init__(self, folder: IFolder, readonly: bool, notify=None) -> None:
        self.folder = folder
        self.readonly = readonly
        self.uids: list[int] = []
        self.recent: set[int] = set()
        self._notify = notify  # called (no args) when something got queued
        self._added: list[int] = []
        self._expunged: set[int] = set()
        self._flags: dict[int, frozenset[str]] = {}
        self.keywords: set[str] = set()
        #: SEARCHRES (RFC 5182): the UIDs of the last ``RETURN (SAVE)``, ``$`` later.
        self.saved: list[int] = []
        self._keywords_grew = False  # FLAGS/PERMANENTFLAGS must be sent again
        #: CONDSTORE enabled: flag updates carry MODSEQ (RFC 7162 3.1.4).
        self.modseq = False
        #: QRESYNC enabled: VANISHED instead of EXPUNGE, UID in flag updates (3.2.10).
        self.vanished = False
        #: IMAP4rev2 is enabled (mailhost.imap.rev2): no \Recent, no RECENT responses.
        self.rev2 = False

    # -- set-up / tear-down ---------------------------------------------------------

    def load(self, infos: Sequence[MessageInfo], recent: Iterable[int]) -> None:
        self.load_columns([i.uid for i in infos], [i.flags for i in infos], recent)

    def load_columns(self, uids: Iterable[int], flags: Iterable[frozenset[str]],
                     recent: Iterable[int]) -> None:
        """Number the messages; ``flags`` (one set per message) gives the keywords."""
        self.uids = list(uids)
        self.recent = set(recent)
        kw: set[str] = set()
        for fs in set(flags):  # a big mailbox has few distinct flag sets
            kw.update(f for f in fs if not f.startswith("\\"))
        self.keywords = kw

    def attach(self) -> None:
        self.folder.add_listener(self)

    def detach(self) -> None:
        try:
            self.folder.remove_listener(self)
        except (KeyError, ValueError):
            pass
        self._notify = None

    # -- numbering --------------------------------------------------------------------

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return None

    def resolve(self, seqset: SequenceSet, uid: bool) -> list[int]:
        """UIDs named by a sequence set (by sequence number or by UID), ascending.

        Works on ranges with bisection, not an expanded list, so
        ``UID FETCH 1:4294967295`` costs O(messages), not O(range). Raises
        BadSequence for sequence numbers beyond EXISTS.
        """
        uids = self.uids
        if seqset.saved:  # ``$``: what is left of the saved result, by UID either way
            present = set(uids)
            return [u for u in self.saved if u in present]
        ranges = seqset.ranges
        picked: set[int] = set()
        if uid:
            largest = uids[-1] if uids else 0
            for lo, hi in ranges:
                lo = largest if lo is None else lo
                hi = largest if hi is None else hi
                if lo > hi:
                    lo, hi = hi, lo
                a = bisect.bisect_left(uids, lo)
                b = bisect.bisect_right(uids, hi)
                if b - a == len(uids):
                    return list(uids)
                picked.update(uids[a:b])
        else:
            n = len(uids)
            bounds = []
            for lo, hi in ranges:
                lo = n if lo is None else lo
                hi = n if hi is None else hi
                if lo > hi:
                    lo, hi = hi, lo
                if hi > n or lo < 1:
                    raise BadSequence("sequence number out of range")
                bounds.append((lo, hi))
            for lo, hi in bounds:
                if lo == 1 and hi == n:
                    return list(uids)
                picked.update(uids[lo - 1:hi])
        return sorted(picked)

    # -- IFolderListener ------------------------------------------------------------

    def messages_added(self, folder, infos: Sequence[MessageInfo]) -> None:
        self._added.extend(i.uid for i in infos)
        for i in infos:
            self.note_keywords(i.flags)
        self._poke()

    def flags_changed(self, folder, infos: Sequence[MessageInfo]) -> None:
        for i in infos:
            self._flags[i.uid] = i.flags
            self.note_keywords(i.flags)
        self._poke()

    def messages_expunged(self, folder, uids: Sequence[int]) -> None:
        self._expunged.update(uids)
        self._poke()

    def _poke(self) -> None:
        if self._notify is not None:
            self._notify()

    # -- FLAGS and PERMANENTFLAGS ----------------------------------------------------

    def note_keywords(self, flags: Iterable[str]) -> None:
        """Keywords now in use in the folder; a new one means FLAGS must be sent again."""
        new = {f for f in flags if not f.startswith("\\")} - self.keywords
        if new:
            self.keywords |= new
            self._keywords_grew = True

    def flags_lines(self) -> list[bytes]:
        """The untagged FLAGS and ``OK [PERMANENTFLAGS ...]`` lines for this folder."""
        flags = b"(" + b" ".join(f.encode("ascii", "replace")
                                 for f in (*FLAG_ORDER, *sorted(self.keywords))) + b")"
        if self.readonly:
            permanent = b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n"
        else:
            permanent = b"* OK [PERMANENTFLAGS " + flags[:-1] + b" \\*)] Flags permitted\r\n"
        return [b"* FLAGS " + flags + b"\r\n", permanent]

    def keyword_updates(self) -> list[bytes]:
        """FLAGS and PERMANENTFLAGS again if a keyword came into use since they were last
        sent (RFC 3501 7.2.6: before any FETCH shows it); else nothing."""
        if not self._keywords_grew:
            return []
        self._keywords_grew = False
        return self.flags_lines()

    # -- own changes ------------------------------------------------------------------

    def note_expunged(self, uids: Iterable[int]) -> None:
        """This session expunged these (the listener may or may not have said so yet)."""
        self._expunged.update(uids)

    def forget_flags(self, uids: Iterable[int]) -> None:
        """Flag changes this session already reported itself."""
        for u in uids:
            self._flags.pop(u, None)

    @property
    def expunges_pending(self) -> frozenset[int]:
        """UIDs expunged whose EXPUNGE (or VANISHED) the client has not been sent yet:
        CONTEXT=SEARCH reports them to sequence-number contexts first (``context``)."""
        return frozenset(self._expunged)

    @property
    def has_pending(self) -> bool:
        return bool(self._added or self._expunged or self._flags or self._keywords_grew)

    def pending_updates(self, allow_expunge: bool, with_uid: bool = False) -> list[bytes]:
        """Untagged lines for queued changes, applying them to the seq map.

        With ``allow_expunge`` False, expunged messages keep their numbers (they
        stay in the map) and only EXISTS/FETCH are sent.
        """
        out: list[bytes] = self.keyword_updates()
        gone: list[int] = []
        if allow_expunge and self._expunged:
            gone = sorted(self._expunged)
            self._expunged.clear()
            # Each EXPUNGE renumbers the rest: report from the highest seq down so the
            # numbers sent are valid at the moment each line is read.
            seqs = [s for s in (self.seq_of(u) for u in gone) if s is not None]
            if self.vanished and seqs:
                out.append(b"* VANISHED " + format_set([self.uids[s - 1] for s in seqs])
                           + b"\r\n")
            for s in sorted(seqs, reverse=True):
                if not self.vanished:
                    out.append(b"* %d EXPUNGE\r\n" % s)
                del self.uids[s - 1]
            for u in gone:
                self._flags.pop(u, None)
                self.recent.discard(u)
        if self._added:
            last = self.uids[-1] if self.uids else 0
            new = sorted(u for u in set(self._added) if u > last)
            self._added.clear()
            # One added and expunged while queued never existed for this client (it
            # has no number to expunge): no EXISTS for it.
            taken = set(gone)
            new = [u for u in new if u not in taken
                   and (u not in self._expunged or self.folder.get(u))]
            if new:
                self.uids.extend(new)
                fresh = [u for u in new if (i := self.folder.get(u)) is not None and i.recent]
                if fresh and not self.readonly:
                    # Like Dovecot: the session that first reports a new message owns
                    # its \Recent; claim it in the store so other sessions see it as old.
                    if not self.rev2:
                        self.recent.update(fresh)
                    d = self.folder.claim_recent()
                    if hasattr(d, "addErrback"):
                        d.addErrback(lambda f: log.failure("claim_recent failed", f))
                out.append(b"* %d EXISTS\r\n" % len(self.uids))
                if not self.rev2:
                    out.append(b"* %d RECENT\r\n" % len(self.recent))
        if self._flags:
            changed, self._flags = self._flags, {}
            for u in sorted(changed):
                seq = self.seq_of(u)
                if seq is None:
                    continue
                flags = set(changed[u])
                if u in self.recent:
                    flags.add("\\Recent")
                if self.modseq:
                    out.append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n"
                               % (seq, u, format_flags(flags), self.folder.modseq_of(u)))
                elif with_uid or self.rev2:  # RFC 9051 7.5.2: unsolicited ones carry UID
                    out.append(b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq, u, format_flags(flags)))
                else:
                    out.append(b"* %d FETCH (FLAGS %s)\r\n" % (seq, format_flags(flags)))
        return out
