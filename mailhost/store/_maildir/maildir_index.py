"""A folder's in-memory index, and building it from disk in a worker thread.

The index is a ``FolderIndex``: parallel arrays in UID order (UID, size, date, state,
wrap) plus the list of unique base names, so a 100k-message folder costs a few hundred
bytes per message and no per-message Python object beyond its name. A *state* is one
distinct (info part, in new/) pair, kept once in a small table with its IMAP flags;
MessageInfo objects are made only when someone asks for one.

``load_folder`` reads Dovecot's ``dovecot-uidlist`` (creating it, or migrating an old
``mailhost-uidlist``, if there is none), lists new/ and cur/ once and gives files that
no record names their UIDs right there in the thread, in Dovecot's order and with one
append under the uidlist's lock (maildir_uids). Nothing is stat'ed: sizes come from
``S=``/``W=`` in the names, and a date (the file's mtime, as for Dovecot) is read when
first asked for, or by the folder's background pass that takes it from
``mailhost-uidcache`` or the file and records it there (``UNKNOWN_DATE`` until then).
"""

from __future__ import annotations

import gc
import os
import re
import sys
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import itemgetter
from typing import NamedTuple, cast, overload

from mailhost.message.crlf import crlf_size
from mailhost.store._maildir import legacy_uidlist, uidcache
from mailhost.store._maildir.dovecot_uidlist import new_uid_validity
from mailhost.store._maildir.maildir_io import list_names, stream_names, subdir_fds
from mailhost.store._maildir.maildir_names import (
    KEYWORDS_FILE,
    Keywords,
    filename,
    info_letters,
    sizes_from_base,
)
from mailhost.store._maildir.maildir_uids import FolderUids
from mailhost.store.interfaces import Columns, MessageInfo
from mailhost.store.modes import PRIVATE, FileModes

_new = object.__new__


def _fast_info(uid: int, key: str, size: int, flags: frozenset[str], date: float,
              recent: bool, modseq: int = 0) -> MessageInfo:
    """A MessageInfo built without the frozen-dataclass __init__ (several times faster).
    Equal to a normal one."""
    info = _new(MessageInfo)
    info.__dict__.update(uid=uid, key=key, size=size, flags=flags, internal_date=date,
                         recent=recent, modseq=modseq)
    return info


def _check_fast_info() -> Callable[..., MessageInfo]:
    """Fall back to the plain constructor should MessageInfo ever lose its __dict__."""
    try:
        sample = _fast_info(1, "k", 2, frozenset(), 3.0, True, 4)
        if sample == MessageInfo(1, "k", 2, frozenset(), 3.0, True, 4):
            return _fast_info
    except (AttributeError, TypeError):
        pass
    return MessageInfo


#: Build a MessageInfo fast (``_fast_info``, or the constructor where that fails).
fast_info = _check_fast_info()


class State(NamedTuple):
    """One distinct (info part, in new/) of a folder, with what it means."""

    part: str | None
    recent: bool
    flags: frozenset[str]
    extra: str  # letters no keyword maps, kept verbatim on renames


#: ``FolderIndex.snapshot()``: (base names, UIDs, state ids, the state table).
Snapshot = tuple[list[str], "array[int]", "array[int]", list[State]]

#: The date of a file adopted in bulk whose mtime has not been read yet (in the index
#: and in mailhost-uidcache lines); ``FolderIndex.date_at`` reads it on first use.
UNKNOWN_DATE = -1.0  # a float: compared with the float date column


def name_time(base: str) -> float:
    """The delivery time a Maildir name starts with (0 if none): the fallback date of a
    file that vanished before its mtime was read."""
    head = base.partition(".")[0]
    return float(head) if head.isdecimal() else 0.0


_ORDER_RE = re.compile(r"(\d*)(?:\.[^.:]*?M(\d*))?")
#: ``_ORDER_RE.match``, which never fails (every part of the pattern is optional).
_order_match = cast("Callable[[str], re.Match[str]]", _ORDER_RE.match)


def name_order(name: str) -> tuple[int, int, str]:
    """Sort key of Dovecot's ``maildir_filename_sort_cmp``: the seconds the name starts
    with, then the microseconds of its ``M<usec>`` part, then the name. Bulk adoption
    gives UIDs in this order, as Dovecot would, without a stat per file."""
    secs, usec = _order_match(name).groups()
    return int(secs or 0), (-1 if usec is None else int(usec or 0)), name


def sort_by_name_order(names: list[str]) -> None:
    """Sort file names by ``name_order`` in place, faster than with that key.

    When every name starts with decimal seconds of one width (any Maildir written in
    this century), a plain string sort already orders by seconds; only runs of names
    with equal seconds then need the microsecond key."""
    names.sort()
    heads = [name.partition(".")[0] for name in names]
    joined = "".join(heads)
    if not (joined.isascii() and joined.isdecimal()
            and len(set(map(len, heads))) <= 1):
        _sort_by_key(names)
        return
    if len(set(heads)) == len(heads):
        return
    n, i = len(names), 0
    while i < n:
        j = i + 1
        while j < n and heads[j] == heads[i]:
            j += 1
        if j - i > 1:
            names[i:j] = sorted(names[i:j], key=name_order)
        i = j


def _sort_by_key(names: list[str]) -> None:
    """The general case: a stable sort on one integer per name after the name sort."""
    match = _order_match
    parsed = [match(name).groups() for name in names]
    width = 10 ** max((len(u) for _, u in parsed if u), default=1)
    keys = [int(secs or 0) * width * 10 + (0 if usec is None else int(usec or 0) + 1)
            for secs, usec in parsed]
    del parsed
    order = sorted(range(len(names)), key=keys.__getitem__)
    names[:] = [names[i] for i in order]


class _LazyDates(Sequence[float]):
    """The date column of a Columns snapshot, reading unknown mtimes on first use."""

    def __init__(self, index: FolderIndex, uids: array[int], keys: list[str],
                 dates: array[float]) -> None:
        self._index, self._uids, self._keys, self._dates = index, uids, keys, dates

    def __len__(self) -> int:
        return len(self._dates)

    @overload
    def __getitem__(self, i: int) -> float: ...
    @overload
    def __getitem__(self, i: slice) -> list[float]: ...

    def __getitem__(self, i: int | slice) -> float | list[float]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        date = self._dates[i]
        if date == UNKNOWN_DATE:
            pos = self._index.pos(self._uids[i])
            date = self._index.date_at(pos) if pos >= 0 else name_time(self._keys[i])
            self._dates[i] = date
        return date


class FolderIndex:
    """The compact index of one folder, ascending by UID (see the module docstring).

    Lives on the reactor thread; the loader builds one in a thread and hands it over.
    """

    def __init__(self, keywords: Keywords, path: str = "") -> None:
        self.keywords = keywords
        self.path = path  # the folder's directory (kept current by the folder)
        self.unknown_dates = 0  # how many dates are UNKNOWN_DATE
        self.fill_cursor = 0  # the background date pass goes on after this UID
        self.unsaved_dates: set[int] = set()  # UIDs whose date was read but not recorded
        self.renaming: dict[str, str] = {}  # base -> new relative path, while renaming
        #: UIDs a \Recent claim took whose file still waits in new/ for the claim's
        #: rename: the index says where the file is (new/), but shows it not recent
        #: (MaildirFolder.claim_recent).
        self.claimed: set[int] = set()
        self.uids = array("q")
        self.sizes = array("q")
        self.dates = array("d")
        self.states = array("I")
        self.wrap = bytearray()
        self.keys: list[str] = []
        self.by_base: dict[str, int] = {}
        self.table: list[State] = []
        self._state_ids: dict[tuple[str | None, bool], int] = {}
        #: uid -> RFC 7162 modseq: the folder's ``ModSeqs.by_uid``, shared (it keeps
        #: them; the index only shows them in the infos it makes).
        self.modseqs: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.uids)

    # -- states --------------------------------------------------------------------

    def state(self, part: str | None, recent: bool) -> int:
        """The state id of an info part in new/ (``recent``) or cur/."""
        sid = self._state_ids.get((part, recent))
        if sid is None:
            flags, extra = self.keywords.flags_of(info_letters(part))
            sid = len(self.table)
            self.table.append(State(part, recent, flags, extra))
            self._state_ids[(part, recent)] = sid
        return sid

    def remap_keywords(self) -> set[int]:
        """The keyword map changed (letters given out, or learnt from a changed
        dovecot-keywords): give every state the flags its letters mean now. Returns
        the state ids whose flags changed (their messages' FLAGS did)."""
        changed = set()
        for sid, st in enumerate(self.table):
            flags, extra = self.keywords.flags_of(info_letters(st.part))
            if flags != st.flags or extra != st.extra:
                self.table[sid] = State(st.part, st.recent, flags, extra)
                if flags != st.flags:
                    changed.add(sid)
        return changed

    def unmapped_letters(self) -> set[str]:
        """Keyword letters in file names that no keyword maps (kept verbatim): a new
        keyword should not get one of these while another letter is free."""
        return {ch for st in self.table for ch in st.extra if "a" <= ch <= "z"}

    # -- lookups -------------------------------------------------------------------

    def pos(self, uid: int) -> int:
        """Position of a UID, or -1."""
        i = bisect_left(self.uids, uid)
        return i if i < len(self.uids) and self.uids[i] == uid else -1

    def __contains__(self, uid: int) -> bool:
        return self.pos(uid) >= 0

    def info_at(self, i: int) -> MessageInfo:
        st = self.table[self.states[i]]
        date = self.dates[i]
        if date == UNKNOWN_DATE:
            date = self.date_at(i)
        uid = self.uids[i]
        return fast_info(uid, self.keys[i], self.sizes[i], st.flags, date,
                         st.recent and uid not in self.claimed, self.modseqs.get(uid, 0))

    def date_at(self, i: int) -> float:
        """The internal date at a position, reading the file's mtime if it is not known
        yet (one stat of a file whose directory entry was just listed: like the
        read-only opens of MaildirFolder.open_message, cheaper than a thread hop)."""
        date = self.dates[i]
        if date != UNKNOWN_DATE:
            return date
        st, key = self.table[self.states[i]], self.keys[i]
        paths = [os.path.join("new" if st.recent else "cur", filename(key, st.part))]
        if key in self.renaming:
            # A flag rename is in flight in a thread: the file may have its new name.
            paths.append(self.renaming[key])
        for rel in paths:
            try:
                date = float(int(os.stat(os.path.join(self.path, rel)).st_mtime))
                break
            except OSError:
                continue
        else:
            return name_time(key)  # gone (being expunged): nothing to cache
        self.dates[i] = date
        self.unknown_dates -= 1
        self.unsaved_dates.add(self.uids[i])
        return date

    def set_date(self, uid: int, date: float) -> None:
        """Fill in a date that is still unknown (one read on demand meanwhile wins)."""
        i = self.pos(uid)
        if i >= 0 and self.dates[i] == UNKNOWN_DATE:
            self.dates[i] = date
            self.unknown_dates -= 1

    def unknown_rows(self, uids: Iterable[int] | None = None) -> list[tuple[int, str, str]]:
        """(uid, path relative to the folder, base) of every message, or of these UIDs,
        whose date is still UNKNOWN_DATE: what a bulk read in a thread needs."""
        if not self.unknown_dates:
            return []
        dates, table, states, keys = self.dates, self.table, self.states, self.keys
        if uids is None:
            where: Iterable[int] = [i for i, d in enumerate(dates) if d == UNKNOWN_DATE]
        else:
            where = [i for i in map(self.pos, uids) if i >= 0 and dates[i] == UNKNOWN_DATE]
        out: list[tuple[int, str, str]] = []
        for i in where:
            st = table[states[i]]
            out.append((self.uids[i], os.path.join("new" if st.recent else "cur",
                                                   filename(keys[i], st.part)), keys[i]))
        return out

    def unknown(self, limit: int) -> list[tuple[int, str, int, bool, str, float]]:
        """Up to ``limit`` (uid, path relative to the folder, size, wrap, base, date) of
        messages whose date is not recorded in the uidcache yet: UNKNOWN_DATE where it
        is still to be read, else the date read on demand.

        Unknown dates are scanned from ``fill_cursor`` on (and the cursor moved past
        them), so a row whose date could not be read does not come back every batch;
        the cursor wraps to the start once the scan reaches the end."""
        out: list[tuple[int, str, int, bool, str, float]] = []
        dates, table = self.dates, self.table

        def row(i: int) -> tuple[int, str, int, bool, str, float]:
            st, key = table[self.states[i]], self.keys[i]
            return (self.uids[i],
                    os.path.join("new" if st.recent else "cur", filename(key, st.part)),
                    self.sizes[i], bool(self.wrap[i]), key, dates[i])

        while self.unsaved_dates and len(out) < limit:
            i = self.pos(self.unsaved_dates.pop())
            if i >= 0:
                out.append(row(i))
        if not self.unknown_dates or len(out) >= limit:
            return out
        for i in range(bisect_left(self.uids, self.fill_cursor + 1), len(dates)):
            if dates[i] == UNKNOWN_DATE:
                out.append(row(i))
                if len(out) >= limit:
                    self.fill_cursor = self.uids[i]
                    return out
        self.fill_cursor = 0
        return out

    def get(self, uid: int) -> MessageInfo | None:
        i = self.pos(uid)
        return None if i < 0 else self.info_at(i)

    def state_at(self, i: int) -> State:
        return self.table[self.states[i]]

    def relpath_at(self, i: int) -> str:
        """The indexed name of the file at a position, relative to the folder."""
        st = self.table[self.states[i]]
        return os.path.join("new" if st.recent else "cur", filename(self.keys[i], st.part))

    def letters_at(self, i: int) -> str:
        """The flag letters of the file at a position, sorted (the modseq journal's
        record of what the file said)."""
        return "".join(sorted(info_letters(self.table[self.states[i]].part)))

    def letters(self) -> list[str]:
        """``letters_at`` of every position (computed once per state)."""
        per_state = ["".join(sorted(info_letters(st.part))) for st in self.table]
        return [per_state[s] for s in self.states]

    def infos(self) -> list[MessageInfo]:
        """Every message as a MessageInfo (made now: the index keeps none)."""
        dates = self.dates
        if self.unknown_dates:
            dates = array("d", dates)  # a file gone meanwhile gets its name's time
            for i, date in enumerate(dates):
                if date == UNKNOWN_DATE:
                    dates[i] = self.date_at(i)
        table, states = self.table, self.states
        flags = [st.flags for st in table]
        recent = [st.recent for st in table]
        # 100k new objects would run the cyclic GC over the whole heap several times
        # (half the cost); none of them can be garbage yet.
        paused = gc.isenabled()
        gc.disable()
        try:
            modseqs = self.modseqs
            shown = [recent[s] for s in states]
            for uid in self.claimed:
                if (i := self.pos(uid)) >= 0:
                    shown[i] = False
            return list(map(fast_info, self.uids, self.keys, self.sizes,
                            [flags[s] for s in states], dates, shown,
                            [modseqs.get(u, 0) for u in self.uids]))
        finally:
            if paused:
                gc.enable()

    def columns(self) -> Columns:
        table = self.table
        flags = [st.flags for st in table]
        recent = bytes(st.recent for st in table)
        states, uids, dates = self.states, array("q", self.uids), array("d", self.dates)
        lazy = (_LazyDates(self, uids, list(self.keys), dates)
                if self.unknown_dates else dates)
        shown: bytes | bytearray = bytes(map(recent.__getitem__, states))
        if self.claimed:
            shown = bytearray(shown)
            for uid in self.claimed:
                if (i := self.pos(uid)) >= 0:
                    shown[i] = 0
        return Columns(uids, list(map(flags.__getitem__, states)), shown,
                       array("q", self.sizes), lazy)

    def recent_uids(self) -> list[int]:
        """The UIDs shown recent: in new/ and not claimed. Each session that reports a
        delivery claims it, and a Python pass over every state cost 3.6-6.5 ms of the
        reactor on a 100k folder. Instead each state's low byte is taken and marked
        at C speed (slice, translate), and only the marked ones are looked at: 0.2 ms."""
        recent = {i for i, st in enumerate(self.table) if st.recent}
        if not recent:
            return []
        states, width = self.states, self.states.itemsize
        low = states.tobytes()[0 if sys.byteorder == "little" else width - 1::width]
        wanted = {sid & 0xFF for sid in recent}
        marks = low.translate(bytes(1 if b in wanted else 0 for b in range(256)))
        uids, claimed = self.uids, self.claimed
        found = []
        at = marks.find(1)
        while at >= 0:
            if states[at] in recent and uids[at] not in claimed:  # not another 256th
                found.append(uids[at])
            at = marks.find(1, at + 1)
        return found

    # -- changes -------------------------------------------------------------------

    def add(self, uid: int, key: str, size: int, date: float, sid: int, wrap: bool) -> None:
        """Insert a message (normally the highest UID so far: an append)."""
        if not self.uids or uid > self.uids[-1]:
            self.uids.append(uid)
            self.keys.append(key)
            self.sizes.append(size)
            self.dates.append(date)
            self.states.append(sid)
            self.wrap.append(wrap)
        else:
            i = bisect_left(self.uids, uid)
            if i < len(self.uids) and self.uids[i] == uid:
                self.by_base.pop(self.keys[i], None)
                if self.dates[i] == UNKNOWN_DATE:
                    self.unknown_dates -= 1
                self.keys[i], self.sizes[i], self.dates[i] = key, size, date
                self.states[i], self.wrap[i] = sid, wrap
            else:
                self.uids.insert(i, uid)
                self.keys.insert(i, key)
                self.sizes.insert(i, size)
                self.dates.insert(i, date)
                self.states.insert(i, sid)
                self.wrap.insert(i, wrap)
        self.by_base[key] = uid
        if date == UNKNOWN_DATE:
            self.unknown_dates += 1

    def remove(self, uids: Iterable[int]) -> list[int]:
        """Drop these UIDs; returns those that were present."""
        positions = sorted({p for p in map(self.pos, uids) if p >= 0})
        if not positions:
            return []
        removed = [self.uids[p] for p in positions]
        self.claimed.difference_update(removed)
        dates = self.dates
        for p in positions:
            self.by_base.pop(self.keys[p], None)
            if dates[p] == UNKNOWN_DATE:
                self.unknown_dates -= 1
        if len(positions) <= 32:
            for p in reversed(positions):
                del self.uids[p], self.keys[p], self.sizes[p], self.dates[p]
                del self.states[p], self.wrap[p]
        else:
            keep = bytearray(b"\x01") * len(self.uids)
            for p in positions:
                keep[p] = 0
            self.uids = array("q", compress(self.uids, keep))
            self.keys = list(compress(self.keys, keep))
            self.sizes = array("q", compress(self.sizes, keep))
            self.dates = array("d", compress(self.dates, keep))
            self.states = array("I", compress(self.states, keep))
            self.wrap = bytearray(compress(self.wrap, keep))
        return removed

    def clear(self) -> None:
        for arr in (self.uids, self.sizes, self.dates, self.states):
            del arr[:]
        self.wrap.clear()
        self.keys.clear()
        self.by_base.clear()
        self.unknown_dates = 0
        self.unsaved_dates.clear()
        self.claimed.clear()

    def snapshot(self) -> Snapshot:
        """Copies for a thread to compare against the directory (C-speed copies)."""
        return list(self.keys), array("q", self.uids), array("I", self.states), list(self.table)


@dataclass
class Loaded:
    """A folder's index as read from disk."""

    validity: int
    uid_next: int
    index: FolderIndex
    foreign: list[tuple[str, str]] = field(default_factory=list)  # (subdir, file name)
    stale: int = 0  # uidlist records whose file is gone
    migrated: bool = False  # a mailhost-uidlist was migrated by this load


def _read_keywords(path: str) -> Keywords:
    try:
        with open(os.path.join(path, KEYWORDS_FILE), encoding="utf-8") as f:
            return Keywords.parse(f.read())
    except FileNotFoundError:
        return Keywords()


def _start_uidlist(path: str, uids: FolderUids, names: Iterable[str],
                   ) -> dict[int, tuple[float, int, bool]]:
    """Create the folder's dovecot-uidlist (under its lock): from a ``mailhost-uidlist``
    if there is one (migration: same UIDVALIDITY, UIDNEXT and UID for every file still
    there), else empty with a new UIDVALIDITY. Returns the migrated facts (uid -> date,
    size, wrap) for the index. Someone else may have created it meanwhile: then theirs
    is read and kept. A file whose header is unreadable is replaced, as Dovecot
    replaces a broken one."""
    ul = uids.uidlist
    facts: dict[int, tuple[float, int, bool]] = {}
    legacy_path = os.path.join(path, legacy_uidlist.LEGACY_FILE)
    with uids.dotlock():
        if ul.refresh() and ul.header is not None:
            return facts
        legacy = legacy_uidlist.read(legacy_path)
        if legacy is None:
            ul.create_header(new_uid_validity())
            ul.recreate(uids.fsync)
            return facts
        validity, uid_next, records = legacy
        live = {n.partition(":")[0] for n in names}
        by_uid: dict[int, str] = {}
        for base, (uid, date, size, wrap) in records.items():
            if base in live and uid not in by_uid:  # one name per UID
                by_uid[uid] = base
                facts[uid] = (float(date), size, wrap)
        ul.by_base = {base: uid for uid, base in by_uid.items()}
        ul.max_uid = max(by_uid, default=0)
        ul.create_header(validity, uid_next)
        ul.recreate(uids.fsync)
    uidcache.rewrite(uids.cache_path, validity,
                     [(u, *f) for u, f in sorted(facts.items())], uids.modes)
    try:
        os.rename(legacy_path, legacy_path + legacy_uidlist.MIGRATED_SUFFIX)
    except FileNotFoundError:
        pass
    return facts


def load_folder(path: str, fsync: bool, modes: FileModes = PRIVATE, adopt: bool = True,
                uids: FolderUids | None = None, keywords: Keywords | None = None,
                ) -> Loaded:
    """Read dovecot-uidlist and keywords (unless given), list new/ and cur/, build the
    index; with ``adopt``, give files no record names their UIDs too (in Dovecot's name
    order, one append under the lock), else return them as ``foreign``.

    One bulk parse of the uidlist and no stat: sizes come from ``,S=``/``,W=`` in the
    names (or mailhost-uidcache, or one read of a file whose name has none), dates
    stay UNKNOWN_DATE until asked for or filled in the background (mailhost-uidcache,
    else the mtime)."""
    if uids is None:
        uids = FolderUids(path, modes, fsync)
    cur, new = list_names(path)
    if keywords is None:
        keywords = _read_keywords(path)
    ul = uids.uidlist
    with uids.mutex:
        migrated: dict[int, tuple[float, int, bool]] | None = None
        if not ul.refresh() or ul.header is None:
            migrated = _start_uidlist(path, uids, cur + new)
        validity, uid_next, records = ul.validity, ul.next_uid, ul.by_base
        index = FolderIndex(keywords, path)
        out = Loaded(validity, uid_next, index, migrated=migrated is not None)
        if new:  # cur/ wins when a crash left a file in both
            in_cur = {n.partition(":")[0] for n in cur}
            new = [n for n in new if n.partition(":")[0] not in in_cur]
            del in_cur
        foreign: list[tuple[str, str]] = []  # (subdir, name)
        if records:
            get = records.get
            rows = []  # (uid, base, part or None, in new/)
            for names, recent, sub in ((cur, False, "cur"), (new, True, "new")):
                for name in names:
                    base, sep, part = name.partition(":")
                    uid = get(base)
                    if uid is None:
                        foreign.append((sub, name))
                    else:
                        rows.append((uid, base, part if sep else None, recent))
            cur, new = [], []
            # By UID only: a stable sort keeps listing order (cur/ first) among the
            # names of one UID, and never compares a missing info part with a string.
            rows.sort(key=itemgetter(0))
            uid_col = [r[0] for r in rows]
            if len(set(uid_col)) != len(uid_col):
                kept = rows[:1]
                for r in rows[1:]:
                    if r[0] != kept[-1][0]:
                        kept.append(r)
                    elif r[1] != kept[-1][1]:
                        # Two names on one UID (a broken uidlist): the later is foreign.
                        foreign.append(("new" if r[3] else "cur", filename(r[1], r[2])))
                    # else: a second file with the same base name (rsync, a restore):
                    # the first one is the message, as Dovecot keeps one per name.
                rows = kept
                uid_col = [r[0] for r in rows]
            bases = [r[1] for r in rows]
            states = [(r[2], r[3]) for r in rows]
            sizes, wraps = _bulk_sizes(bases)
            # Dates (and sizes of names without any) from mailhost-uidcache: one bulk
            # read, no stat; what it lacks stays unknown until asked for.
            cached = uidcache.read(uids.cache_path, validity)
            if migrated:
                by_uid = {u: f[0] for u, f in migrated.items()}
            else:
                by_uid = cached.dates_by_uid()
            if by_uid:
                dates = array("d", map(by_uid.get, uid_col, repeat(UNKNOWN_DATE, len(rows))))
            else:
                dates = array("d", [UNKNOWN_DATE]) * len(rows)
            del by_uid
            missing = [i for i, size in enumerate(sizes) if size < 0]
            if missing:
                facts = migrated or cached.facts_by_uid()
                _fill_sizes(path, uids, bases, uid_col, states, sizes, wraps, missing,
                            facts)
            del cached
            sid_of = {k: index.state(*k) for k in set(states)}
            index.uids.extend(uid_col)
            index.keys.extend(bases)
            index.sizes.extend(sizes)
            index.dates.extend(dates)
            index.unknown_dates = dates.count(UNKNOWN_DATE)
            index.states.extend([sid_of[k] for k in states])
            index.wrap.extend(wraps)
            index.by_base.update(zip(bases, uid_col, strict=True))
            del rows, uid_col, bases, states, dates
        else:
            foreign = [("cur", n) for n in cur] + [("new", n) for n in new]
            cur, new = [], []
        out.stale = len(records) - len(index)
        ul.handed = max(ul.handed, index.uids[-1] if len(index) else 0)
        ul.trim_arrived()  # the records above stay newcomers: files not listed yet
        if foreign and adopt:
            _adopt_all(path, uids, index,
                       [n for sub, n in foreign if sub == "cur"],
                       [n for sub, n in foreign if sub == "new"])
            out.uid_next = ul.next_uid
            ul.handed = max(ul.handed, index.uids[-1] if len(index) else 0)
        elif foreign:
            out.foreign = foreign
        return out


def _fill_sizes(path: str, uids: FolderUids, bases: list[str], uid_col: list[int],
                states: list[tuple[str | None, bool]], sizes: list[int],
                wraps: bytearray | list[bool],
                missing: list[int], facts: dict[int, tuple[float, int, bool]]) -> None:
    """Sizes of names without ``,S=``/``,W=``: from the cache, else read the file once
    (and remember it in the cache). A file gone meanwhile gets size 0."""
    learnt = []
    for i in missing:
        known = facts.get(uid_col[i])
        if known is not None and known[1] >= 0:
            sizes[i], wraps[i] = known[1], known[2]
            continue
        part, recent = states[i]
        rel = os.path.join("new" if recent else "cur", filename(bases[i], part))
        try:
            size, raw = crlf_size(os.path.join(path, rel))
        except FileNotFoundError:
            sizes[i], wraps[i] = 0, False
            continue
        sizes[i], wraps[i] = size, size != raw
        learnt.append((uid_col[i], UNKNOWN_DATE, size, size != raw))
    if learnt:
        uids.cache(learnt)


#: Dovecot's ``,S=<size on disk>,W=<CRLF size>`` at the end of a base name ("/" cannot
#: occur in a file name, so it separates the names searched at once).
_SIZES_AT_END = re.compile(r",S=(\d+),W=(\d+)(?=/|\Z)")
_SAME_SIZES_AT_END = re.compile(r",S=(\d+),W=\1(?=/|\Z)")


def _bulk_sizes(bases: list[str]) -> tuple[list[int], bytearray | list[bool]]:
    """(CRLF sizes, needs-CRLF-wrap) from the names, -1 where a name has no Dovecot
    size ending. One regex pass over all names when every one has it."""
    if not bases:
        return [], bytearray()
    joined = "/".join(bases)
    same = _SAME_SIZES_AT_END.findall(joined)  # S= equal to W=: a CRLF file
    if len(same) == len(bases):
        return list(map(int, same)), bytearray(len(bases))
    found = _SIZES_AT_END.findall(joined)
    if len(found) == len(bases):
        return ([int(w) for _, w in found],
                [s != w and int(s) != int(w) for s, w in found])
    sizes: list[int] = []
    wraps: list[bool] = []
    for base in bases:
        s, w = sizes_from_base(base)
        if s is not None and w is not None:
            sizes.append(w)
            wraps.append(s != w)
        else:
            sizes.append(-1)
            wraps.append(False)
    return sizes, wraps


def _adopt_all(path: str, uids: FolderUids, index: FolderIndex, cur: list[str],
               new: list[str]) -> None:
    """Give foreign files (names in cur/ and new/) UIDs in Dovecot's order
    (``name_order``) with one uidlist append under the lock, and add them to
    ``index``. Empties ``cur`` and ``new`` (their names are garbage as soon as the base
    names are split off).

    No file is stat'ed: sizes come from ``S=``/``W=`` in the name (a file without them
    is read once), and dates stay UNKNOWN_DATE until someone asks (as Dovecot reads
    mtimes only for INTERNALDATE). The folder fills them in later in the background."""
    in_new = set(new)
    names = cur + new
    cur.clear()
    new.clear()
    sort_by_name_order(names)
    split = [name.partition(":") for name in names]
    bases = [t[0] for t in split]
    if len(set(bases)) != len(bases):
        # Two files with one base name: keep the first (the shortest name), else both
        # would get UIDs and a restart would renumber them.
        first: dict[str, int] = {}
        for i, base in enumerate(bases):
            first.setdefault(base, i)
        keep_at = sorted(first.values())
        names = [names[i] for i in keep_at]
        split = [split[i] for i in keep_at]
        bases = [t[0] for t in split]
    parts = [t[2] if t[1] else None for t in split]
    del split
    sizes, wraps = _bulk_sizes(bases)
    keep = None
    learnt = []  # (position, size, wrap) read from files without sizes in the name
    for i in [i for i, size in enumerate(sizes) if size < 0]:
        sub = "new" if names[i] in in_new else "cur"
        try:
            sizes[i], raw = crlf_size(os.path.join(path, sub, names[i]))
        except FileNotFoundError:
            keep = keep or bytearray(b"\x01") * len(sizes)
            keep[i] = 0
            continue
        wraps[i] = sizes[i] != raw
        learnt.append(i)
    # One state per distinct (info part, in new/); usually a handful.
    if in_new:
        keys = list(zip(parts, [name in in_new for name in names], strict=True))
        sid_of = {k: index.state(*k) for k in set(keys)}
        sids = list(map(sid_of.__getitem__, keys))
        del keys
    else:
        sid_of_part = {k: index.state(k, False) for k in set(parts)}
        sids = list(map(sid_of_part.__getitem__, parts))
    del parts, names
    if keep is not None:  # files that vanished since the listing
        learnt = [sum(keep[:i]) for i in learnt]
        bases, sizes, sids = (list(compress(bases, keep)), list(compress(sizes, keep)),
                              list(compress(sids, keep)))
        wraps = [bool(w) for w in compress(wraps, keep)]
    n = len(bases)
    got, newcomers = uids.assign_loading(bases)
    for uid, (base, recent, part, wrap, size, mtime) in newcomers:
        # Another program's records that arrived meanwhile: below ours, they keep
        # their UIDs (see maildir_uids).
        index.add(uid, base, size, mtime, index.state(part, recent), wrap)
    if learnt:
        uids.cache([(got[i], UNKNOWN_DATE, sizes[i], bool(wraps[i])) for i in learnt])
    if n and got == list(range(got[0], got[0] + n)) and (
            not len(index) or index.uids[-1] < got[0]):
        index.uids.extend(got)
        index.keys.extend(bases)
        index.sizes.extend(sizes)
        index.dates.extend(array("d", [UNKNOWN_DATE]) * n)
        index.states.extend(sids)
        index.wrap.extend(wraps)
        index.by_base.update(zip(bases, got, strict=True))
        index.unknown_dates += n
    else:
        for row in zip(got, bases, sizes, [UNKNOWN_DATE] * n, sids, wraps, strict=True):
            index.add(*row)


def examine_foreign(path: str, files: list[tuple[str, str]],
                    ) -> list[tuple[str, str, int, bool, int]]:
    """[(subdir, name, CRLF size, needs CRLF wrapping, mtime)] of files another program
    dropped in, in ``name_order``; files gone meanwhile are left out."""
    out: list[tuple[str, str, int, bool, int]] = []
    with subdir_fds(path, ("new", "cur")) as fds:
        stat = os.stat
        append = out.append
        taken: set[str] = set()
        for sub, name in files:
            fd = fds.get(sub)
            base = name.partition(":")[0]
            if fd is None or base in taken:
                continue  # one message per base name (the first listed: cur/ first)
            s, w = sizes_from_base(base)
            try:
                # Relative to the open directory: no path walk per file.
                mtime = int(stat(name, dir_fd=fd).st_mtime)
                if s is not None and w is not None:
                    size, wrap = w, s != w  # Dovecot: S= on disk, W= with CRLF
                else:
                    size, raw = crlf_size(os.path.join(path, sub, name))
                    wrap = size != raw
            except FileNotFoundError:
                continue
            taken.add(base)
            append((sub, name, size, wrap, mtime))
    out.sort(key=lambda t: name_order(t[1]))
    return out


#: A directory whose mtime is at least this old is trusted not to have changed unseen
#: (file-system timestamps are coarse: a change in the same tick keeps the mtime).
MTIME_SETTLE = 2.0


def dir_stamp(path: str) -> tuple[int, int] | None:
    """(new/ mtime, cur/ mtime) in ns, or None if too recent to trust for skipping."""
    try:
        stamp = (os.stat(os.path.join(path, "new")).st_mtime_ns,
                 os.stat(os.path.join(path, "cur")).st_mtime_ns)
    except FileNotFoundError:
        return None
    if time.time_ns() - max(stamp) < MTIME_SETTLE * 1e9:
        return None
    return stamp


def diff_folder(path: str, snapshot: Snapshot,
                last_stamp: tuple[int, int] | None,
                ) -> tuple[tuple[int, int] | None, list[tuple[int, bool, str | None]],
                           list[int], list[tuple[str, str]]]:
    """Compare the directory with a ``FolderIndex.snapshot()``.

    Returns (stamp, renamed [(uid, recent, part)], gone UIDs, unknown files
    [(subdir, name)]); when both directories are unchanged since ``last_stamp`` the
    listing is skipped and nothing is reported."""
    stamp = dir_stamp(path)
    if stamp is not None and stamp == last_stamp:
        return stamp, [], [], []
    cur, new = stream_names(path)  # cur/'s names one at a time, not a list of 100k
    keys, uids, states, table = snapshot
    where = dict(zip(keys, range(len(keys)), strict=True))
    # Where each indexed base was first listed (0: not yet, 1: cur/, 2: new/): a
    # bytearray, not a dict of every listed base (~13 MB of a 100k-message rescan's
    # peak, issue 16); only bases the index lacks go in a dict.
    seen = bytearray(len(keys))
    taken: dict[str, bool] = {}  # base the index lacks -> listed in new/
    renamed: dict[int, tuple[int, bool, str | None]] = {}
    foreign = []
    for names, recent, sub in ((cur, False, "cur"), (new, True, "new")):
        for name in names:
            base, sep, part = name.partition(":")
            i = where.get(base)
            if i is None:
                if base not in taken:
                    taken[base] = recent
                    foreign.append((sub, name))
                continue
            if seen[i]:
                # A second file with this base name: the one the index has stays the
                # message (no flag flip-flop between listings); cur/ wins over new/.
                if (seen[i] == 2) == recent:
                    st = table[states[i]]
                    if st.recent == recent and st.part == (part if sep else None):
                        renamed.pop(uids[i], None)
                continue
            seen[i] = 2 if recent else 1
            st = table[states[i]]
            info = part if sep else None
            if st.recent != recent or st.part != info:
                renamed[uids[i]] = (uids[i], recent, info)
    gone = [uid for uid, s in zip(uids, seen, strict=True) if not s]
    return stamp, list(renamed.values()), gone, foreign
