"""``mailhost-uidcache``: what we know of each UID that dovecot-uidlist has no field for.

Dovecot's uidlist maps names to UIDs and nothing else we could use: a message's
INTERNALDATE is its file's mtime (maildir-mail.c) and its sizes are the ``,S=``/``,W=``
of its name. Reading 100,000 mtimes costs 100,000 stats, and a name another program
chose may carry no sizes, so we keep them here::

    V<uidvalidity>
    <uid> <internal date> <CRLF size> <0|1 needs CRLF wrapping>

Append-only (a later line for a UID wins; UIDs are never reused within a
UIDVALIDITY, so a line never goes wrong), compacted now and then. It is a cache, never
the source of a UID: lost, stale or torn, it is rebuilt from the files (stat, name,
read), and a header with another UIDVALIDITY discards it whole. Nothing here is
fsynced. Every function does file I/O: worker threads only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import NamedTuple

from mailhost.store.modes import PRIVATE, FileModes

CACHE_FILE = "mailhost-uidcache"

_LINE = re.compile(rb"^(\d+) (-?\d+) (-?\d+) ([01])\n", re.M)

Facts = tuple[float, int, bool]  # (internal date, CRLF size, needs CRLF wrapping)


class Columns(NamedTuple):
    """The file's rows as columns (later rows for a UID come later)."""

    uids: list[int]
    dates: list[float]
    sizes: list[int]
    wraps: list[bool]

    def dates_by_uid(self) -> dict[int, float]:
        return dict(zip(self.uids, self.dates, strict=True))

    def facts_by_uid(self) -> dict[int, Facts]:
        return dict(zip(self.uids, zip(self.dates, self.sizes, self.wraps, strict=True),
                        strict=True))


EMPTY = Columns([], [], [], [])


def read(path: str, validity: int) -> Columns:
    """Every row; empty if the file is missing or of another UIDVALIDITY. A date or
    size of -1 means not known. Bulk: one split of the whole file at C speed when
    every line is well formed, else a regex that skips torn lines."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return EMPTY
    nl = data.find(b"\n")
    if nl < 0 or data[:nl] != b"V%d" % validity:
        return EMPTY
    end = data.rfind(b"\n") + 1
    text = data[nl + 1:end].decode("ascii", "replace")
    flat = text.replace("\n", " ").split(" ")
    flat.pop()
    if len(flat) == 4 * text.count("\n") and "".join(flat).replace("-", "").isdecimal():
        uids, dates, sizes, wraps = flat[0::4], flat[1::4], flat[2::4], flat[3::4]
    else:  # a torn or foreign line somewhere: the careful way
        found = _LINE.findall(data, nl + 1)
        uids, dates, sizes, wraps = ([f[i].decode() for f in found] for i in range(4))
    return Columns(list(map(int, uids)), list(map(float, dates)), list(map(int, sizes)),
                   [w == "1" for w in wraps])


def _lines(rows: Iterable[tuple[int, float, int, bool]]) -> bytes:
    return "".join("%d %d %d %d\n" % (uid, date, size, wrap)
                   for uid, date, size, wrap in rows).encode()


def append(path: str, validity: int, rows: Iterable[tuple[int, float, int, bool]],
           modes: FileModes = PRIVATE) -> None:
    """Append (uid, date, size, wrap) rows with one write; start the file if needed.
    A file of another UIDVALIDITY is replaced."""
    data = _lines(rows)
    if not data:
        return
    header = b"V%d\n" % validity
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
    except FileNotFoundError:
        modes.write_atomic(path, header + data, fsync=False)
        return
    try:
        head = os.pread(fd, len(header), 0)
        if head != header:
            os.close(fd)
            fd = -1
            modes.write_atomic(path, header + data, fsync=False)
            return
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # end a torn line: it is skipped, ours are read
        os.write(fd, data)
    finally:
        if fd >= 0:
            os.close(fd)


def rewrite(path: str, validity: int, rows: Iterable[tuple[int, float, int, bool]],
            modes: FileModes = PRIVATE) -> None:
    """Replace the file with these rows (compaction)."""
    modes.write_atomic(path, b"V%d\n" % validity + _lines(rows), fsync=False)
