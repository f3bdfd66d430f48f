"""Building a folder's in-memory index from disk, in a worker thread.

The index of a folder is three dicts keyed by UID — ``infos`` (MessageInfo, in UID
order), ``parts`` (the file name's info part, e.g. ``2,FS``) and ``by_base`` (unique
base name -> UID) — plus the set of UIDs whose file is LF-only (``wrap``). Whether a
file is in new/ or cur/ is ``MessageInfo.recent``. Nothing is stat'ed: sizes and dates
come from the uidlist, flags from the names one listdir returns.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from mailhost.store import uidlist
from mailhost.store.crlf import crlf_size
from mailhost.store.interfaces import MessageInfo
from mailhost.store.maildir_io import list_names
from mailhost.store.maildir_names import (
    KEYWORDS_FILE,
    Keywords,
    info_letters,
    sizes_from_base,
)
from mailhost.store.uidlist import UIDLIST_FILE, new_uid_validity

_new = object.__new__


def fast_info(uid: int, key: str, size: int, flags: frozenset[str], date: float,
              recent: bool) -> MessageInfo:
    """A MessageInfo built without the frozen-dataclass __init__ (several times faster;
    loading a 100k-message folder builds 100k of them). Equal to a normal one."""
    info = _new(MessageInfo)
    info.__dict__.update(uid=uid, key=key, size=size, flags=flags, internal_date=date,
                         recent=recent)
    return info


def _check_fast_info():
    """Fall back to the plain constructor should MessageInfo ever lose its __dict__."""
    try:
        sample = fast_info(1, "k", 2, frozenset(), 3.0, True)
        if sample == MessageInfo(1, "k", 2, frozenset(), 3.0, True):
            return fast_info
    except (AttributeError, TypeError):
        pass
    return MessageInfo


fast_info = _check_fast_info()  # noqa: F811


@dataclass
class Loaded:
    """A folder's index as read from disk."""

    validity: int
    uid_next: int
    keywords: Keywords
    infos: dict[int, MessageInfo] = field(default_factory=dict)
    parts: dict[int, str | None] = field(default_factory=dict)
    wrap: set[int] = field(default_factory=set)
    by_base: dict[str, int] = field(default_factory=dict)
    foreign: list[tuple[str, str]] = field(default_factory=list)  # (subdir, file name)
    stale: int = 0  # uidlist lines whose file is gone


def _seen(cur: list[str], new: list[str]) -> dict[str, tuple[bool, str | None]]:
    """base -> (in new/, info part); cur/ wins when a crash left a file in both."""
    seen: dict[str, tuple[bool, str | None]] = {}
    for name in cur:
        base, sep, part = name.partition(":")
        seen[base] = (False, part if sep else None)
    for name in new:
        base, sep, part = name.partition(":")
        if base not in seen:
            seen[base] = (True, part if sep else None)
    return seen


class FlagMemo:
    """Caches info part -> (flags, unmapped letters): folders have few distinct combos,
    and sharing the frozensets saves memory on big folders."""

    def __init__(self, keywords: Keywords) -> None:
        self.keywords = keywords
        self.memo: dict[str | None, tuple[frozenset[str], str, str | None]] = {}

    def get(self, part: str | None) -> tuple[frozenset[str], str, str | None]:
        got = self.memo.get(part)
        if got is None:
            flags, extra = self.keywords.flags_of(info_letters(part))
            got = self.memo[part] = (flags, extra, part)
        return got


def load_folder(path: str, fsync: bool) -> Loaded:
    """Read uidlist and keywords, list new/ and cur/, build the index."""
    cur, new = list_names(path)
    try:
        with open(os.path.join(path, KEYWORDS_FILE), encoding="utf-8") as f:
            keywords = Keywords.parse(f.read())
    except FileNotFoundError:
        keywords = Keywords()
    uidlist.repair_tail(os.path.join(path, UIDLIST_FILE))
    found = uidlist.read(os.path.join(path, UIDLIST_FILE))
    if found is None:
        validity = new_uid_validity()
        uidlist.rewrite(os.path.join(path, UIDLIST_FILE), validity, 1, [], fsync)
        found = (validity, 1, {}, 0)
    validity, uid_next, records, lines = found
    out = Loaded(validity, uid_next, keywords)
    seen = _seen(cur, new)
    memo = FlagMemo(keywords)
    infos, parts, by_base, wrap = out.infos, out.parts, out.by_base, out.wrap
    last, ordered = 0, True
    for base, (uid, date, size, w) in records.items():
        hit = seen.get(base)
        if hit is None or uid in infos:
            continue
        del seen[base]
        recent, part = hit
        flags, _, part = memo.get(part)
        infos[uid] = fast_info(uid, base, size, flags, float(date), recent)
        parts[uid] = part
        by_base[base] = uid
        if w:
            wrap.add(uid)
        if uid < last:
            ordered = False
        last = uid
    if not ordered:
        out.infos = dict(sorted(infos.items()))
    out.foreign = [("new" if recent else "cur", base if part is None else f"{base}:{part}")
                   for base, (recent, part) in seen.items()]
    out.stale = lines - len(infos)
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


def diff_folder(path: str, known: dict[str, int], infos: dict[int, MessageInfo],
                parts: dict[int, str | None], last_stamp: tuple[int, int] | None):
    """Compare the directory with the index. ``known`` is a snapshot of base -> UID;
    ``infos``/``parts`` are the live dicts, only read key by key (safe under the GIL).
    Returns (stamp, renamed [(uid, recent, part)], gone UIDs, unknown files
    [(subdir, name)]); when both directories are unchanged since ``last_stamp`` the
    listing is skipped and nothing is reported."""
    stamp = dir_stamp(path)
    if stamp is not None and stamp == last_stamp:
        return stamp, [], [], []
    cur, new = list_names(path)
    seen = _seen(cur, new)
    renamed, foreign = [], []
    for base, (recent, part) in seen.items():
        uid = known.get(base)
        if uid is None:
            foreign.append(("new" if recent else "cur",
                            base if part is None else f"{base}:{part}"))
            continue
        info = infos.get(uid)
        if info is not None and (info.recent != recent or parts.get(uid) != part):
            renamed.append((uid, recent, part))
    gone = sorted(uid for base, uid in known.items() if base not in seen)
    return stamp, renamed, gone, foreign


def examine_foreign(path: str, files: list[tuple[str, str]]):
    """CRLF size, whether the file needs CRLF wrapping, and mtime of files another
    program dropped in; [(subdir, name, size, wrap, mtime)], oldest first."""
    out = []
    for sub, name in files:
        full = os.path.join(path, sub, name)
        s, w = sizes_from_base(name.partition(":")[0])
        try:
            mtime = os.stat(full).st_mtime
            if s is not None and w is not None:
                size, wrap = w, s != w  # Dovecot: S= on disk, W= with CRLF
            else:
                size, raw = crlf_size(full)
                wrap = size != raw
        except FileNotFoundError:
            continue
        out.append((sub, name, size, wrap, int(mtime)))
    out.sort(key=lambda t: (t[4], t[1]))
    return out
