"""Mod-sequences (RFC 7162) of one folder, shared by every store.

A folder counts its changes: each append, flag change or expunge takes the next
number, and every message it touched carries that number as its ``modseq`` (one
change of many messages, say ``STORE 1:* +FLAGS``, is one number, as in Dovecot).
The highest number given out is the folder's HIGHESTMODSEQ.

Expunged UIDs are remembered with the number of their expunge so QRESYNC can say
``VANISHED (EARLIER)``, but only the latest ``VANISHED_KEEP`` of them (Dovecot
forgets them when its transaction log rotates): below the *horizon* the folder no
longer knows, and ``expunged_since`` answers None, which tells the protocol to
count every UID it knows of that is not in the folder as expunged.

Every change reaches a folder's listeners through one ``ListenerSet``;
``ModSeqListeners`` is that set with numbering in front, so no change (ours, another
session's, another program's seen on disk) can be announced without a new number,
and listeners see infos that carry it. A store that persists them passes a journal.

**Several processes on one folder** (``server.workers``): each process numbers the
changes it makes or sees on disk in its own counter, so the numbers must agree in
order across processes without a shared counter. With a ``clock`` (``time_clock``:
microseconds since the epoch) a new number is never below the time it is given, so a
change made after a client saw HIGHESTMODSEQ X in one process is numbered above X in
every process. The one gap is a change already on disk but not yet seen by the
process that answered X (the Maildir watch's delay); ``changed_since`` and
``expunged_since`` therefore look ``CLOCK_MARGIN`` further back, which reports a few
changes twice (RFC 7162 allows more, never fewer).
"""

from __future__ import annotations

import time
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence

from mailhost.store.interfaces import IFolder, MessageInfo
from mailhost.store.listeners import ListenerSet

#: Expunges remembered for VANISHED (EARLIER); older ones raise the horizon.
VANISHED_KEEP = 100_000
#: With a clock: how far (µs) ``changed_since`` looks back beyond what it is asked,
#: for changes another process numbered before this one saw them (the watch's delay).
CLOCK_MARGIN = 5_000_000


def time_clock() -> int:
    """Microseconds since the epoch: the floor of new modseqs across processes."""
    return time.time_ns() // 1000

_new = object.__new__


def with_modseq(info: MessageInfo, modseq: int) -> MessageInfo:
    """``info`` with another modseq (without the frozen-dataclass __init__: appends of
    100k adopted files pass through here)."""
    out = _new(MessageInfo)
    out.__dict__.update(info.__dict__)
    out.__dict__["modseq"] = modseq
    return out


class ModSeqs:
    """The mod-sequences of one folder's messages and its remembered expunges."""

    def __init__(self, highest: int = 1, keep: int = VANISHED_KEEP) -> None:
        # 1, not 0: a HIGHESTMODSEQ is positive, and no change ever gets the one an
        # empty folder reports.
        self.highest = max(1, highest)
        self.by_uid: dict[int, int] = {}
        self.keep = keep
        self.gone_uids = array("q")  # expunged UIDs, in order of their modseq
        self.gone_mods = array("q")  # ascending
        self.horizon = 0  # expunges with a modseq at or below this are forgotten
        #: Set when other processes number this folder's changes too (see above).
        self.clock: Callable[[], int] | None = None

    def next(self) -> int:
        self.highest += 1
        if self.clock is not None:
            self.highest = max(self.highest, self.clock())
        return self.highest

    def _margin(self, modseq: int) -> int:
        return modseq - CLOCK_MARGIN if self.clock is not None else modseq

    def get(self, uid: int) -> int:
        return self.by_uid.get(uid, 0)

    def touch(self, uids: Iterable[int]) -> int:
        """One new change of these messages (appended or flagged); its modseq."""
        modseq = self.next()
        by_uid = self.by_uid
        for uid in uids:
            by_uid[uid] = modseq
        return modseq

    def expunge(self, uids: Sequence[int], modseq: int | None = None) -> int:
        """These messages are gone, with a new modseq (or ``modseq``, replaying a
        journal); returns it."""
        if modseq is None:
            modseq = self.next()
        pop = self.by_uid.pop
        for uid in uids:
            pop(uid, None)
        self.gone_uids.extend(uids)
        self.gone_mods.extend([modseq] * len(uids))
        excess = len(self.gone_uids) - self.keep
        if excess > 0:
            self.horizon = max(self.horizon, self.gone_mods[excess - 1])
            del self.gone_uids[:excess], self.gone_mods[:excess]
        return modseq

    def changed_since(self, modseq: int) -> list[int]:
        modseq = self._margin(modseq)
        return sorted([u for u, m in self.by_uid.items() if m > modseq])

    def expunged_since(self, modseq: int) -> list[int] | None:
        modseq = self._margin(modseq)
        if modseq < self.horizon:
            return None
        i = bisect_right(self.gone_mods, modseq)
        return sorted(set(self.gone_uids[i:]))


#: A store's record of numbered changes: ``(kind, uids, modseq)`` with kind "set"
#: (appended or flagged) or "gone" (expunged), called on the reactor thread.
Journal = Callable[[str, Sequence[int], int], None]


class ModSeqListeners(ListenerSet):
    """A folder's listeners with mod-sequence numbering in front (see the module
    docstring): every change gets its number before anyone hears of it."""

    def __init__(self, modseqs: ModSeqs, journal: Journal | None = None) -> None:
        super().__init__()
        self.modseqs = modseqs
        self.journal = journal

    def _number(self, infos: Sequence[MessageInfo]) -> list[MessageInfo]:
        if not infos:
            return []
        uids = [i.uid for i in infos]
        modseq = self.modseqs.touch(uids)
        if self.journal is not None:
            self.journal("set", uids, modseq)
        return [with_modseq(i, modseq) for i in infos]

    def added(self, folder: IFolder, infos: Sequence[MessageInfo]) -> None:
        super().added(folder, self._number(infos))

    def changed(self, folder: IFolder, infos: Sequence[MessageInfo]) -> None:
        super().changed(folder, self._number(infos))

    def expunged(self, folder: IFolder, uids: Sequence[int]) -> None:
        if uids:
            modseq = self.modseqs.expunge(list(uids))
            if self.journal is not None:
                self.journal("gone", list(uids), modseq)
        super().expunged(folder, uids)
