"""The per-folder ``mailhost-modseq`` journal: RFC 7162 mod-sequences on Maildir.

Dovecot keeps mod-sequences in its own index files, which we do not share; a Maildir
itself has none. So mailhost keeps its own, next to ``mailhost-cache``, and written
the same way: appended lazily in batches by a worker thread under the folder's file
lock, rewritten whole (``write_atomic``) when the folder loads. Lines::

    mailhost-modseq 1 <uidvalidity>
    R <reserved>                      numbers up to here may have been given out
    S <modseq> <uid>:<letters> ...    these messages changed (appended or flagged)
    G <modseq> <uid> ...              these were expunged
    C <highest>                       the store closed cleanly with this HIGHESTMODSEQ

Losing the tail of the journal in a crash loses no correctness, because a load
compares it with the Maildir: every message whose flag letters differ from its last
``S`` entry, or that has none (another program's change while we were down, or a line
we never wrote), and every recorded UID no longer there, gets a new number. New
numbers never go below the last reservation: before the counter passes ``R`` a new
one is appended with an fsync (``RESERVE`` ahead, renewed at half way), so a restart
after a crash starts above anything a client may have seen. After a clean close the
counter goes on from the ``C`` value exactly. A journal that is missing or unreadable
(lost, deleted, a new folder) starts the counter at the time in microseconds, as
UIDVALIDITY starts from the time: above anything an earlier journal of this folder can
have given out unless it averaged more than a million changes a second since (and
still far below 2**63, RFC 7162's limit). All functions here run in a thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence

from mailhost.store.modes import FileModes
from mailhost.store.modseq import ModSeqs

MODSEQ_FILE = "mailhost-modseq"
_MAGIC = "mailhost-modseq 1"
#: How far ahead of the counter a reservation reaches.
RESERVE = 10_000


class Journal:
    """What a read of the file found."""

    def __init__(self) -> None:
        self.validity = 0
        self.reserved = 0
        self.highest = 0  # the largest modseq named anywhere
        self.clean: int | None = None  # HIGHESTMODSEQ of a clean close, if last
        #: uid -> modseq << 16 | letters id (one int per message, not a tuple: 100k
        #: of them are read at once), ``letters`` the ids' strings.
        self.state: dict[int, int] = {}
        self.letters: list[str] = []
        self.gone: list[tuple[int, list[int]]] = []  # (modseq, uids), ascending


def read(path: str) -> Journal:
    """Parse the journal (a torn or unknown line is skipped)."""
    out = Journal()
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            head = f.readline().split()
            if len(head) != 3 or " ".join(head[:2]) != _MAGIC or not head[2].isdecimal():
                return out
            out.validity = int(head[2])
            state, gone = out.state, out.gone
            ids: dict[str, int] = {}
            for line in f:
                if not line.endswith("\n"):
                    break  # torn append
                out.clean = None
                parts = line.split()
                try:
                    kind, n = parts[0], int(parts[1])
                    if kind == "S":
                        for item in parts[2:]:
                            num, _, letters = item.partition(":")
                            lid = ids.get(letters)
                            if lid is None:
                                if len(out.letters) >= 0xFFFF:
                                    lid = 0xFFFF  # too many: compares unequal (a new modseq)
                                else:
                                    lid = ids[letters] = len(out.letters)
                                    out.letters.append(letters)
                            state[int(num)] = n << 16 | lid
                    elif kind == "G":
                        gone_uids = [int(u) for u in parts[2:]]
                        for uid in gone_uids:
                            state.pop(uid, None)
                        gone.append((n, gone_uids))
                    elif kind == "R":
                        out.reserved = max(out.reserved, n)
                        continue
                    elif kind == "C":
                        out.clean = n
                    else:
                        continue
                except (IndexError, ValueError):
                    continue
                out.highest = max(out.highest, n)
    except FileNotFoundError:
        pass
    return out


def set_line(modseq: int, items: Iterable[tuple[int, str]]) -> str:
    return f"S {modseq} " + " ".join(f"{uid}:{letters}" for uid, letters in items) + "\n"


def gone_line(modseq: int, uids: Iterable[int]) -> str:
    return f"G {modseq} " + " ".join(map(str, uids)) + "\n"


def reserve_line(reserved: int) -> str:
    return f"R {reserved}\n"


def load(path: str, validity: int, uids: Sequence[int], letters: Sequence[str],
         modes: FileModes, fsync: bool) -> tuple[ModSeqs, int]:
    """The folder's ModSeqs for an index of ``uids`` whose files now carry ``letters``
    (position-aligned), reconciled with the journal as the module docstring says; the
    journal is rewritten (compacted, with a fresh reservation). Returns (modseqs,
    reserved)."""
    path = os.path.join(path, MODSEQ_FILE)
    j = read(path)
    if j.validity != validity:  # new UIDs: old numbers name other messages
        j.state, j.gone = {}, []
    start = j.clean if j.clean is not None else max(j.reserved, j.highest)
    if not j.validity:  # no journal to go on (see the module docstring)
        start = max(start, time.time_ns() // 1000)
    mods = ModSeqs(start)
    by_uid = mods.by_uid
    logged, names = j.state, j.letters
    fresh: list[int] = []
    same: dict[int, int] = {}  # one int object per distinct modseq, shared
    for uid, let in zip(uids, letters, strict=True):
        rec = logged.pop(uid, None)
        if rec is not None and (rec & 0xFFFF) < len(names) and names[rec & 0xFFFF] == let:
            modseq = rec >> 16
            by_uid[uid] = same.setdefault(modseq, modseq)
        else:
            fresh.append(uid)
    for modseq, gone in j.gone:
        mods.expunge(gone, modseq)
    vanished = sorted(logged)  # what is left was not found in the folder
    del logged, j
    if fresh:
        mods.touch(fresh)
    if vanished:
        mods.expunge(vanished)
    reserved = mods.highest + RESERVE
    write_atomic(path, validity, reserved, mods, dict(zip(uids, letters, strict=True)),
                 modes, fsync)
    return mods, reserved


def write_atomic(path: str, validity: int, reserved: int, mods: ModSeqs,
                 letters: dict[int, str], modes: FileModes, fsync: bool) -> None:
    """The whole journal, compacted: the reservation, the remembered expunges and one
    ``S`` line per modseq still carried by a message (``letters``: uid -> letters)."""
    groups: dict[int, list[int]] = {}
    for uid, modseq in mods.by_uid.items():
        groups.setdefault(modseq, []).append(uid)
    lines = [f"{_MAGIC} {validity}\n", reserve_line(reserved)]
    lines += [gone_line(m, u) for m, u in _gone_groups(mods)]
    lines += [set_line(m, [(u, letters.get(u, "")) for u in sorted(us)])
              for m, us in sorted(groups.items())]
    modes.write_atomic(path, "".join(lines).encode("ascii"), fsync=fsync)


def compact(path: str, validity: int, reserved: int, mods: ModSeqs,
            letters: dict[int, str], modes: FileModes, fsync: bool) -> None:
    """Rewrite a folder's journal (``path`` is the folder) from a snapshot."""
    write_atomic(os.path.join(path, MODSEQ_FILE), validity, reserved, mods, letters,
                 modes, fsync)


def snapshot(mods: ModSeqs) -> ModSeqs:
    """A copy for a thread to write while the live one goes on changing."""
    copy = ModSeqs(mods.highest, mods.keep)
    copy.by_uid = dict(mods.by_uid)
    copy.gone_uids = mods.gone_uids[:]
    copy.gone_mods = mods.gone_mods[:]
    copy.horizon = mods.horizon
    return copy


def _gone_groups(mods: ModSeqs) -> list[tuple[int, list[int]]]:
    out: list[tuple[int, list[int]]] = []
    for uid, modseq in zip(mods.gone_uids, mods.gone_mods, strict=True):
        if out and out[-1][0] == modseq:
            out[-1][1].append(uid)
        else:
            out.append((modseq, [uid]))
    return out


def append(path: str, lines: list[str], modes: FileModes, fsync: bool) -> None:
    """Append journal lines (fsync'ed when they hold a reservation)."""
    fd = modes.open_new(os.path.join(path, MODSEQ_FILE),
                        os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        data = "".join(lines).encode("ascii")
        while data:
            data = data[os.write(fd, data):]
        if fsync and any(line.startswith("R ") for line in lines):
            os.fsync(fd)
    finally:
        os.close(fd)
