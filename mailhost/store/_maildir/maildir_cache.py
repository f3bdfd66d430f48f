"""The per-folder ``mailhost-cache`` file behind IFolder.get_cached/set_cached.

JSON lines: a header ``{"v": <uidvalidity>}`` then ``[uid, key, value]`` appended in
batches. Entries for expunged messages are dropped when the file is compacted at
load time. All functions do file I/O and run in a worker thread.
"""

from __future__ import annotations

import json
import os
from collections.abc import Container, Iterable

from mailhost.store.modes import FileModes

CACHE_FILE = "mailhost-cache"


def read(path: str, validity: int, live: Container[int]) -> tuple[dict[int, dict[str, str]], int]:
    """(uid -> {key: value}) for live UIDs, and the number of lines in the file."""
    cache: dict[int, dict[str, str]] = {}
    lines = 0
    try:
        with open(path, encoding="utf-8") as f:
            try:
                header = json.loads(f.readline())
            except ValueError:
                return {}, 0
            if not isinstance(header, dict) or header.get("v") != validity:
                return {}, 0
            for line in f:
                lines += 1
                try:
                    uid, key, value = json.loads(line)
                except ValueError:
                    continue  # torn append
                if uid in live:
                    cache.setdefault(uid, {})[key] = value
    except FileNotFoundError:
        pass
    return cache, lines


def _lines(entries: Iterable[tuple[int, str, str]]) -> str:
    return "".join(json.dumps([u, k, v], ensure_ascii=False) + "\n" for u, k, v in entries)


def append(path: str, validity: int, entries: list[tuple[int, str, str]],
           modes: FileModes) -> None:
    new = not os.path.exists(path)
    fd = modes.open_new(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with open(fd, "a", encoding="utf-8") as f:
        if new:
            f.write(json.dumps({"v": validity}) + "\n")
        f.write(_lines(entries))


def rewrite(path: str, validity: int, cache: dict[int, dict[str, str]],
            modes: FileModes) -> None:
    text = json.dumps({"v": validity}) + "\n" + _lines(
        (u, k, v) for u, d in cache.items() for k, v in d.items())
    modes.write_atomic(path, text.encode("utf-8"), fsync=False)
