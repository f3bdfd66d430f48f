"""The per-folder ``mailhost-uidlist`` file: UIDVALIDITY, UIDNEXT and base name -> UID.

Append-only so delivering a message costs one small append, not a rewrite::

    V<uidvalidity> N<uidnext>
    <uid> <internal date> <crlf size> <0|1 needs CRLF wrapping> <base name>

Lines for expunged messages go stale and are dropped when the file is compacted.
A torn last line (crash mid-append) is ignored. Every function here does file I/O
and runs in a worker thread.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

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
        return f"{self.uid} {self.date} {self.size} {int(self.wrap)} {self.base}\n"


def read(path: str) -> tuple[int, int, dict[str, Record], int] | None:
    """(uidvalidity, uidnext, base -> Record, line count) or None if absent/unreadable."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            header = f.readline().split()
            try:
                validity = int(header[0][1:]) if header[0][0] == "V" else None
                uid_next = int(header[1][1:]) if header[1][0] == "N" else None
            except (IndexError, ValueError):
                return None
            if validity is None or uid_next is None:
                return None
            records: dict[str, Record] = {}
            lines = 0
            for line in f:
                if not line.endswith("\n"):
                    break  # torn append
                parts = line[:-1].split(" ", 4)
                if len(parts) != 5:
                    continue
                try:
                    rec = Record(int(parts[0]), int(parts[1]), int(parts[2]),
                                 parts[3] == "1", parts[4])
                except ValueError:
                    continue
                lines += 1
                records[rec.base] = rec
                uid_next = max(uid_next, rec.uid + 1)
    except FileNotFoundError:
        return None
    return validity, uid_next, records, lines


def append(path: str, records: list[Record]) -> None:
    """Append records with one write (O_APPEND); the caller holds the folder's file lock."""
    data = "".join(r.line() for r in records).encode("utf-8", "surrogateescape")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def rewrite(path: str, validity: int, uid_next: int, records: list[Record],
            fsync: bool) -> None:
    """Atomically replace the file (compaction or creation)."""
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    data = f"V{validity} N{uid_next}\n" + "".join(r.line() for r in records)
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
