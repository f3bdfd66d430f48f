"""The per-folder ``mailhost-cache`` file behind IFolder.get_cached/set_cached.

JSON lines: a header ``{"v": <uidvalidity>}`` then ``[uid, key, value]`` appended in
batches. Entries for expunged messages are dropped when the file is compacted at
load time. All functions do file I/O and run in a worker thread.

In memory the cache is one dict per key (``{key: {uid: value}}``), not one per message:
a 100k-message folder whose messages each have one entry (IMAP's header values) kept
100k small dicts, ~22 MB of the server's peak (issue 16).
"""

from __future__ import annotations

import json
import os
from collections.abc import Container, Iterable

from mailhost.store.modes import FileModes

CACHE_FILE = "mailhost-cache"
#: Keys an older mailhost wrote and nothing reads any more (``sortf1``: IMAP's header
#: fields before they became ``sortf2``). Not loaded, so the next compaction drops
#: them; otherwise they would stay in memory until their messages go.
RETIRED = frozenset({"sortf1"})

#: The cache in memory: key -> {uid: value}.
Cache = dict[str, dict[int, str]]


def read(path: str, validity: int, live: Container[int]) -> tuple[Cache, int, bool]:
    """(key -> {uid: value}) for live UIDs, how many lines of the file it left out
    (expunged messages, torn appends, values set again, retired keys) and whether
    any was of a retired key (the file is then worth compacting whatever its size)."""
    cache: Cache = {}
    lines = 0
    retired = False
    try:
        with open(path, encoding="utf-8") as f:
            try:
                header = json.loads(f.readline())
            except ValueError:
                return {}, 0, False
            if not isinstance(header, dict) or header.get("v") != validity:
                return {}, 0, False
            for line in f:
                lines += 1
                try:
                    uid, key, value = json.loads(line)
                except ValueError:
                    continue  # torn append
                if key in RETIRED:
                    retired = True
                elif uid in live:
                    cache.setdefault(key, {})[uid] = value
    except FileNotFoundError:
        pass
    return cache, lines - entries(cache), retired


#: Encodes one string as JSON (``encode`` of a str is one C call; ``json.dumps`` of a
#: list made a new encoder and walked the list for every line).
_STRING = json.JSONEncoder(ensure_ascii=False)


def _lines(entries: Iterable[tuple[int, str, str]]) -> str:
    """The file's lines for these entries: each what ``json.dumps([uid, key, value],
    ensure_ascii=False)`` writes, at a third of the cost (100k of them after the first
    header SEARCH of a big folder, issue 16)."""
    encode = _STRING.encode
    return "".join(["[%d, %s, %s]\n" % (u, encode(k), encode(v)) for u, k, v in entries])


def append(path: str, validity: int, entries: list[tuple[int, str, str]],
           modes: FileModes) -> None:
    new = not os.path.exists(path)
    fd = modes.open_new(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with open(fd, "a", encoding="utf-8") as f:
        if new:
            f.write(json.dumps({"v": validity}) + "\n")
        f.write(_lines(entries))


def entries(cache: Cache) -> int:
    """How many (uid, key) entries a cache holds."""
    return sum(map(len, cache.values()))


def rewrite(path: str, validity: int, cache: Cache, modes: FileModes) -> None:
    text = json.dumps({"v": validity}) + "\n" + _lines(
        (u, k, v) for k, d in cache.items() for u, v in d.items())
    modes.write_atomic(path, text.encode("utf-8"), fsync=False)
