"""Maildir++ quota: the ``maildirsize`` file every quota-aware MDA of a Maildir shares.

The format (Courier's README.maildirquota, as Dovecot's ``quota = maildir`` backend,
src/plugins/quota/quota-maildir.c, reads and writes it): in the Maildir's root, a
first line of limits, ``<octets>S,<messages>C`` (either may be left out; 0 is no
limit; Dovecot writes ``0S`` when there is none), then lines ``<octets> <messages>``,
each a change (negative for removals), summed to give the usage. A writer appends its
line with one ``O_APPEND`` write, and only if the file exists: a missing file is
rebuilt by the next reader. The file is rebuilt (every folder's ``new/`` and ``cur/``
summed, from the ``,S=`` size in each file name, else a stat, written to a temporary
file and renamed over it) when it is missing, unreadable, 5120 octets or longer, older
than 15 minutes (so mail another program dropped in without updating it is counted
within that time), or when its limits are not ours (the limit changed; Dovecot does
the same). If a folder changed while it was being summed, the count may be off, so
the file is removed instead, to be rebuilt next time (as Dovecot does).

Every function here blocks (file-system calls): they run in the store's thread pool,
under the account's lock, so our own appends and rebuilds do not interleave.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import NamedTuple

from twisted.logger import Logger

from mailhost.store.modes import FileModes

log = Logger()

FILENAME = "maildirsize"
#: A file this long or longer is rebuilt (the Maildir++ rule).
MAX_LENGTH = 5120
#: A file not written for this long is rebuilt (the Maildir++ rule).
STALE_SECONDS = 15 * 60


def header(storage_limit: int, message_limit: int = 0) -> str:
    """The limits line, as Dovecot writes it (``0S`` when there is no limit)."""
    parts = []
    if storage_limit or not message_limit:
        parts.append(f"{storage_limit}S")
    if message_limit:
        parts.append(f"{message_limit}C")
    return ",".join(parts)


def parse_limits(line: str) -> tuple[int, int] | None:
    """(octets, messages) of a limits line (0: none), or None if it is malformed."""
    storage = messages = 0
    for item in line.strip().split(","):
        item = item.strip()
        if len(item) < 2 or not item[:-1].isdigit():
            return None
        if item[-1] == "S":
            storage = int(item[:-1])
        elif item[-1] == "C":
            messages = int(item[:-1])
        else:
            return None
    return storage, messages


def parse(data: bytes) -> tuple[tuple[int, int], int, int] | None:
    """((limits), octets, messages) of a whole file, None if it is broken (no limits
    line, a line that is not two integers, a negative total). A last line without its
    newline is being written: it is left out, as Dovecot does."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    if "\n" not in text:
        return None
    text = text[:text.rindex("\n")]
    lines = text.split("\n")
    limits = parse_limits(lines[0])
    if limits is None:
        return None
    octets = messages = 0
    for line in lines[1:]:
        fields = line.split()
        if len(fields) != 2:
            return None
        try:
            octets += int(fields[0])
            messages += int(fields[1])
        except ValueError:
            return None
    if octets < 0 or messages < 0:
        return None
    return limits, octets, messages


def folder_dirs(root: str) -> list[str]:
    """Every folder of the Maildir++ ``root``: the root (INBOX) and each ``.Name``
    directory that is a Maildir (has ``cur/``)."""
    dirs = [root]
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return dirs
    for entry in entries:
        name = entry.name
        if (name.startswith(".") and name not in (".", "..")
                and entry.is_dir(follow_symlinks=False)
                and os.path.isdir(os.path.join(entry.path, "cur"))):
            dirs.append(entry.path)
    return dirs


def _size_of(directory: str, name: str) -> int | None:
    """A message's octets: the ``,S=`` of its name, else its file's size (None: gone)."""
    at = name.find(",S=")
    if at >= 0:
        digits = ""
        for c in name[at + 3:]:
            if not c.isdigit():
                if c not in ":,":
                    digits = ""
                break
            digits += c
        if digits:
            return int(digits)
    try:
        return os.stat(os.path.join(directory, name)).st_size
    except FileNotFoundError:
        return None


def _stamps(dirs: list[str]) -> list[int]:
    out = []
    for d in dirs:
        for sub in ("new", "cur"):
            try:
                out.append(os.stat(os.path.join(d, sub)).st_mtime_ns)
            except FileNotFoundError:
                out.append(-1)
    return out


def count(root: str) -> tuple[int, int, bool]:
    """(octets, messages, steady) of every message of the Maildir, by walking it;
    ``steady`` is False if a folder changed while it was walked."""
    dirs = folder_dirs(root)
    before = _stamps(dirs)
    octets = messages = 0
    for d in dirs:
        for sub in ("new", "cur"):
            path = os.path.join(d, sub)
            try:
                names = os.listdir(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                if name.startswith("."):
                    continue
                size = _size_of(path, name)
                if size is not None:
                    octets += size
                    messages += 1
    return octets, messages, _stamps(dirs) == before


def rebuild(root: str, limits: tuple[int, int], modes: FileModes) -> tuple[int, int]:
    """Count the Maildir and write a new file with our limits; (octets, messages)."""
    path = os.path.join(root, FILENAME)
    octets, messages, steady = count(root)
    if steady:
        text = f"{header(*limits)}\n{octets} {messages}\n"
        modes.write_atomic(path, text.encode("ascii"), False)
    else:
        remove(root)  # the next reader rebuilds it
    return octets, messages


def current(root: str, limits: tuple[int, int], now: float, modes: FileModes,
            lock: threading.Lock) -> tuple[int, int]:
    """(octets, messages) the Maildir holds: from the file, rebuilt first when it is
    missing, broken, too long, stale or has other limits."""
    path = os.path.join(root, FILENAME)
    with lock:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_LENGTH)
                mtime = os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return rebuild(root, limits, modes)
        parsed = parse(data) if len(data) < MAX_LENGTH else None
        if parsed is None or parsed[0] != limits or mtime < now - STALE_SECONDS:
            return rebuild(root, limits, modes)
        return parsed[1], parsed[2]


def peek(root: str, now: float) -> tuple[int, int]:
    """(octets, messages) without writing anything (for the CLI, which may run as
    another user than the server): the file if it is usable, else a count."""
    try:
        with open(os.path.join(root, FILENAME), "rb") as f:
            data = f.read(MAX_LENGTH)
            mtime = os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        data, mtime = b"", 0.0
    parsed = parse(data) if len(data) < MAX_LENGTH else None
    if parsed is not None and mtime >= now - STALE_SECONDS:
        return parsed[1], parsed[2]
    octets, messages, _ = count(root)
    return octets, messages


def add(root: str, octets: int, messages: int, lock: threading.Lock) -> None:
    """Append one change line, if the file exists (else the next reader rebuilds it)."""
    if not octets and not messages:
        return
    line = f"{octets} {messages}\n".encode("ascii")
    with lock:
        try:
            fd = os.open(os.path.join(root, FILENAME), os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            return
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


class Change(NamedTuple):
    """A change in one Maildir's usage, for ``add_all``."""

    root: str
    octets: int
    messages: int
    lock: threading.Lock


def add_all(changes: Iterable[Change]) -> None:
    """``add`` for many changes, one line per Maildir: a batch of deliveries to one
    account opens its file once (in a worker thread every open hands the GIL to the
    reactor and back: issue 18). Never raises: a lost line is made good by the file's
    next rebuild, so it is logged."""
    totals: dict[str, Change] = {}
    for c in changes:
        t = totals.get(c.root)
        totals[c.root] = c if t is None else t._replace(octets=t.octets + c.octets,
                                                        messages=t.messages + c.messages)
    for c in totals.values():
        try:
            add(c.root, c.octets, c.messages, c.lock)
        except Exception:
            log.failure("updating {root}/maildirsize failed", root=c.root)


def remove(root: str) -> None:
    """Drop the file (a folder went away): the next reader rebuilds it."""
    try:
        os.unlink(os.path.join(root, FILENAME))
    except FileNotFoundError:
        pass
