"""Reading the ``mailhost-uidlist`` of mailhost before it shared Dovecot's uidlist.

The old per-folder file, append-only::

    V<uidvalidity> N<uidnext>
    <uid> <internal date> <crlf size> <0|1 needs CRLF wrapping> <base name>

A later line for a base name replaces an earlier one (date -1: not read yet); a torn
last line is ignored. A folder that has this file and no ``dovecot-uidlist`` is
migrated on first open (maildir_index.load_folder): its UIDVALIDITY, UIDNEXT and every
UID go into a new ``dovecot-uidlist``, the dates and sizes into ``mailhost-uidcache``,
and the old file is renamed ``mailhost-uidlist.migrated`` (kept, never read again).
When both exist, ``dovecot-uidlist`` wins and the old file is left alone.
"""

from __future__ import annotations

LEGACY_FILE = "mailhost-uidlist"
MIGRATED_SUFFIX = ".migrated"


def read(path: str) -> tuple[int, int, dict[str, tuple[int, int, int, bool]]] | None:
    """(uidvalidity, uidnext, base -> (uid, date, size, wrap)), or None if the file is
    absent or its header unreadable."""
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
        max_uid = max(max_uid, uid)
    return validity, max(uid_next, max_uid + 1), records
