"""Maildir file names: Dovecot-compatible unique names, the ``:2,`` info part and the
per-folder ``dovecot-keywords`` map from lower-case letters to IMAP keywords."""

from __future__ import annotations

import itertools
import os
import re
import socket
import threading
import time
from collections.abc import Iterable

from mailhost.store.interfaces import StoreError

SYSTEM_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S",
                  "\\Deleted": "T"}
LETTER_FLAGS = {v: k for k, v in SYSTEM_LETTERS.items()}
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"
KEYWORDS_FILE = "dovecot-keywords"

_DIGITS = re.compile(r"\d+")
_counter = itertools.count(1)
_counter_lock = threading.Lock()


def _hostname() -> str:
    # Maildir spec: '/' and ':' in the host part are written as octal escapes.
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


_HOST = _hostname()
# os.getpid() is a system call each time, and a delivery names two files: asked once
# per process (issue 18).
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def unique_base(size: int, crlf_on_disk: bool = True) -> str:
    """A new unique base name ``<sec>.M<usec>P<pid>Q<n>.<host>,S=<size>,W=<size>``.

    S= is the size on disk and W= the CRLF size (Dovecot's meaning); when the file on
    disk is not CRLF (adopted from another program) only W= is given.
    """
    now = time.time()
    with _counter_lock:
        n = next(_counter)
    sizes = f",S={size},W={size}" if crlf_on_disk else f",W={size}"
    return f"{int(now)}.M{int(now % 1 * 1_000_000)}P{_pid}Q{n}.{_HOST}{sizes}"


def split_name(filename: str) -> tuple[str, str | None]:
    """(base, info) of a Maildir file name; info is the text after ':' or None."""
    base, sep, info = filename.partition(":")
    return base, (info if sep else None)


def sizes_from_base(base: str) -> tuple[int | None, int | None]:
    """(S=, W=) values embedded in a base name, None where absent; the last of each
    wins. Dovecot's ``,S=<n>,W=<n>`` ending is parsed without a regex (adopting 100k
    files parses 100k names)."""
    head, sep, tail = base.rpartition(",S=")
    if sep:
        size, sep, wsize = tail.partition(",W=")
        if sep and size.isdecimal() and wsize.isdecimal():  # Dovecot's ",S=<n>,W=<n>"
            return int(size), int(wsize)
    if "," not in base:
        return None, None
    s: int | None = None
    w: int | None = None
    for seg in base.split(",")[1:]:
        tag = seg[:2]
        if tag != "S=" and tag != "W=":
            continue
        digits = seg[2:]
        if not digits.isdecimal():
            m = _DIGITS.match(digits)
            if m is None:
                continue
            digits = m.group()
        if tag == "S=":
            s = int(digits)
        else:
            w = int(digits)
    return s, w


def info_letters(info: str | None) -> str:
    """The flag letters of an info part ('2,FS' -> 'FS'); experimental '1,' info has none."""
    if info and info.startswith("2,"):
        return info[2:]
    return ""


class Keywords:
    """A folder's keyword <-> letter map, in Dovecot's ``dovecot-keywords`` format.

    Names match case-insensitively (Dovecot's hash uses strcasecmp); each keeps the
    spelling the file gives it."""

    def __init__(self, by_index: dict[int, str] | None = None) -> None:
        self.replace(by_index or {})

    def replace(self, by_index: dict[int, str]) -> None:
        """Take a map read from the file (the reactor's copy follows the file's)."""
        self.by_index: dict[int, str] = dict(by_index)
        self.by_name: dict[str, int] = {v: k for k, v in self.by_index.items()}
        self._by_lower: dict[str, int] = {}
        for i in sorted(self.by_index):
            self._by_lower.setdefault(self.by_index[i].lower(), i)

    @classmethod
    def parse(cls, text: str) -> Keywords:
        """Read the file as Dovecot does: lines ``<index> <name>``, index below 26; a
        line without a space, a bad index or a name already listed is skipped."""
        by_index: dict[int, str] = {}
        seen: set[str] = set()
        for line in text.splitlines():
            idx, _, name = line.partition(" ")
            if not (idx.isdecimal() and name and int(idx) < len(KEYWORD_LETTERS)):
                continue
            if name.lower() in seen:
                continue
            seen.add(name.lower())
            by_index[int(idx)] = name
        return cls(by_index)

    def serialize(self) -> str:
        return "".join(f"{i} {n}\n" for i, n in sorted(self.by_index.items()))

    def index_of(self, name: str) -> int | None:
        """The index (0 = ``a``) of a keyword, None if it has no letter."""
        i = self.by_name.get(name)
        return self._by_lower.get(name.lower()) if i is None else i

    def assign(self, keywords: Iterable[str], avoid: Iterable[str] = ()) -> bool:
        """Give every keyword a letter, the free ones not in ``avoid`` first; True if
        the map changed (the file must be written). Only ``KeywordFile.learn`` calls
        this on a folder's map, after re-reading the file under the uidlist lock.
        StoreError, and the map unchanged, if 26 letters do not suffice."""
        missing: dict[str, str] = {}
        for kw in sorted(set(keywords)):
            if self.index_of(kw) is None:
                missing.setdefault(kw.lower(), kw)
        if not missing:
            return False
        avoided = {ord(ch) - 97 for ch in avoid if "a" <= ch <= "z"}
        free = [i for i in range(len(KEYWORD_LETTERS)) if i not in self.by_index]
        free = [i for i in free if i not in avoided] + [i for i in free if i in avoided]
        if len(free) < len(missing):
            raise StoreError("too many keywords in this folder (Maildir allows 26)")
        by_index = dict(self.by_index)
        for i, kw in zip(free, missing.values(), strict=False):
            by_index[i] = kw
        self.replace(by_index)
        return True

    def flags_of(self, letters: str) -> tuple[frozenset[str], str]:
        """(IMAP flags, letters we cannot map and keep verbatim) of a letter string."""
        flags, extra = set(), []
        for ch in letters:
            if ch in LETTER_FLAGS:
                flags.add(LETTER_FLAGS[ch])
            elif "a" <= ch <= "z" and (ord(ch) - 97) in self.by_index:
                flags.add(self.by_index[ord(ch) - 97])
            else:
                extra.append(ch)
        return frozenset(flags), "".join(extra)

    def letters_of(self, flags: Iterable[str], extra: str = "") -> str:
        """Sorted Maildir letters for flags (keywords must have been assigned: one
        without a letter is left out)."""
        out = set(extra)
        for flag in flags:
            if flag in SYSTEM_LETTERS:
                out.add(SYSTEM_LETTERS[flag])
            else:
                i = self.index_of(flag)
                if i is not None:
                    out.add(KEYWORD_LETTERS[i])
        return "".join(sorted(out))


def make_info(letters: str, in_new: bool) -> str | None:
    """The info part for a file: none for an unflagged file in new/, else '2,<letters>'."""
    if in_new and not letters:
        return None
    return "2," + letters


def filename(base: str, info: str | None) -> str:
    return base if info is None else f"{base}:{info}"
