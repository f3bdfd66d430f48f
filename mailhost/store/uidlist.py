"""The per-folder ``mailhost-uidlist`` file: UIDVALIDITY, UIDNEXT and base name -> UID.

Append-only so delivering a message costs one small append, not a rewrite::

    V<uidvalidity> N<uidnext>
    <uid> <internal date> <crlf size> <0|1 needs CRLF wrapping> <base name>

A date of -1 stands for a file adopted in bulk whose mtime was not read yet; a later
line for the same base name (the folder's background date pass) replaces it.
Lines for expunged messages go stale and are dropped when the file is compacted.
A torn last line (crash mid-append) is ignored. Every function here does file I/O
and runs in a worker thread.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from mailhost.store.modes import FileModes

UIDLIST_FILE = "mailhost-uidlist"

_validity_lock = threading.Lock()
_last_validity = 0


def new_uid_validity() -> int:
    """A UIDVALIDITY never handed out before by this process (time based)."""
    global _last_validity
    with _validity_lock:
        _last_validity = max(_last_validity + 1, int(time.time()))
        return _last_validity


@dataclass(slots=True)
class Record:
    uid: int
    date: int
    size: int
    wrap: bool
    base: str

    def line(self) -> str:
        return format_line(self.uid, self.date, self.size, self.wrap, self.base)


#: One line: uid, date, CRLF size, wrap (0/1), base name ("%" formats it from a tuple
#: in C, which bulk writers of 100k lines use).
LINE = "%d %d %d %d %s\n"


def format_line(uid: int, date: int, size: int, wrap: bool, base: str) -> str:
    """One uidlist line (bulk writers format lines directly, without a Record each)."""
    return LINE % (uid, date, size, wrap, base)


def read(path: str) -> tuple[int, int, dict[str, tuple[int, int, int, bool]], int] | None:
    """(uidvalidity, uidnext, base -> (uid, date, size, wrap), line count), or None if
    the file is absent or its header unreadable. File order is kept (mostly UID order)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    lines = text.split("\n")
    header = lines[0].split()
    try:
        if len(header) < 2 or header[0][:1] != "V" or header[1][:1] != "N":
            return None
        validity, uid_next = int(header[0][1:]), int(header[1][1:])
    except ValueError:
        return None
    records: dict[str, tuple[int, int, int, bool]] = {}
    count = 0
    max_uid = 0
    # The last element is "" after a complete file, or a torn append: skip it either way.
    for line in lines[1:-1]:
        parts = line.split(" ", 4)
        if len(parts) != 5:
            continue
        try:
            uid = int(parts[0])
            records[parts[4]] = (uid, int(parts[1]), int(parts[2]), parts[3] == "1")
        except ValueError:
            continue
        count += 1
        if uid > max_uid:
            max_uid = uid
    return validity, max(uid_next, max_uid + 1), records, count


def repair_tail(path: str) -> None:
    """End a torn last line (crash mid-append) so the next append starts a fresh line."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")
    finally:
        os.close(fd)


def append(path: str, records: list[Record], modes: FileModes) -> None:
    """Append records with one write (O_APPEND); the caller holds the folder's file lock."""
    append_text(path, "".join(r.line() for r in records), modes)


def append_text(path: str, text: str, modes: FileModes, create: bool = True) -> None:
    """Append formatted lines with one write (O_APPEND). With ``create`` False a missing
    file raises FileNotFoundError instead of starting one without its header."""
    data = text.encode("utf-8", "surrogateescape")
    flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT if create else 0)
    fd = modes.open_new(path, flags) if create else os.open(path, flags)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            if n <= 0:
                raise OSError(f"short write to {path}")
            view = view[n:]
    finally:
        os.close(fd)


def rewrite(path: str, validity: int, uid_next: int, records: list[Record],
            fsync: bool, modes: FileModes) -> None:
    """Atomically replace the file (compaction or creation)."""
    data = f"V{validity} N{uid_next}\n" + "".join(r.line() for r in records)
    modes.write_atomic(path, data.encode("utf-8", "surrogateescape"), fsync)
