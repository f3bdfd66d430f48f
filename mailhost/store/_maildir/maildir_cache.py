"""The per-folder ``mailhost-cache`` file behind IFolder.get_cached/set_cached.

JSON lines: a header ``{"v": <uidvalidity>}`` then ``[uid, key, value]`` appended in
batches. Entries for expunged messages are dropped when the file is compacted at
load time. All functions do file I/O and run in a worker thread; ``FolderCache`` is
a folder's cache on the reactor thread, which batches its appends.

In memory the cache is one dict per key (``{key: {uid: value}}``), not one per message:
a 100k-message folder whose messages each have one entry (IMAP's header values) kept
100k small dicts, ~22 MB of the server's peak (issue 16).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Container, Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mailhost.store._maildir.maildir_index import FolderIndex
from mailhost.store.modes import FileModes

CACHE_FILE = "mailhost-cache"
#: Keys an older mailhost wrote and nothing reads any more (``sortf1``: IMAP's header
#: fields before they became ``sortf2``). Not loaded, so the next compaction drops
#: them; otherwise they would stay in memory until their messages go.
RETIRED = frozenset({"sortf1"})

#: The cache in memory: key -> {uid: value}.
Cache = dict[str, dict[int, str]]
#: Values set wait this long for others to share their append, unless this many wait.
CACHE_FLUSH_DELAY = 2.0
CACHE_FLUSH_BATCH = 2000


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


class FolderCache:
    """One MaildirFolder's cache (IFolder.get_cached/set_cached): the entries in
    memory, and the values set since the last append, written in batches.

    Built with: ``reactor`` (the append timer), ``run_blocking`` (the store's thread
    helper), ``file_lock`` (the folder's lock over its files in threads), ``path``
    and ``validity`` (the folder's current directory and UIDVALIDITY), ``modes`` (the
    store's), and ``gone`` (whether the folder was deleted: nothing more is written)."""

    log = Logger()

    def __init__(self, reactor: IReactorTime,
                 run_blocking: Callable[..., defer.Deferred[Any]],
                 file_lock: threading.Lock, path: Callable[[], str],
                 validity: Callable[[], int], modes: FileModes,
                 gone: Callable[[], bool]) -> None:
        self._reactor = reactor
        self._run_blocking = run_blocking
        self._file_lock = file_lock
        self._path = path
        self._validity = validity
        self._modes = modes
        self._gone = gone
        self.by_key: Cache = {}  # key -> {uid: value}
        self._pending: list[tuple[int, str, str]] = []
        self._call: IDelayedCall | None = None

    def file(self) -> str:
        return os.path.join(self._path(), CACHE_FILE)

    async def load(self, live: FolderIndex, min_stale: int) -> None:
        """Read the file (entries of UIDs ``live`` has only); rewrite it when it holds more
        than ``min_stale`` lines beyond its live entries, or a retired key."""
        cache, stale, retired = await self._run_blocking(read, self.file(),
                                                         self._validity(), live)
        self.by_key = cache
        if retired or stale > entries(cache) + min_stale:
            await self._run_blocking(self._rewrite, {k: dict(v) for k, v in cache.items()})

    def get(self, uid: int, key: str) -> str | None:
        by_uid = self.by_key.get(key)
        return None if by_uid is None else by_uid.get(uid)

    def set(self, uid: int, key: str, value: str) -> None:
        """Set a value (of a message the folder has), appended with the next batch."""
        self.by_key.setdefault(key, {})[uid] = value
        self._pending.append((uid, key, value))
        if len(self._pending) >= CACHE_FLUSH_BATCH:
            self.write()
        elif self._call is None:
            self._call = self._reactor.callLater(CACHE_FLUSH_DELAY, self.write)

    def drop(self, uids: Iterable[int]) -> None:
        """Forget the entries of expunged messages (the file drops them when it is
        next compacted)."""
        uids = list(uids)
        for by_uid in self.by_key.values():
            for uid in uids:
                by_uid.pop(uid, None)

    def write(self) -> defer.Deferred[None]:
        """Append the values set since the last write, in a thread."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        pending, self._pending = self._pending, []
        if not pending or self._gone():
            return defer.succeed(None)
        path, validity, lock, modes = self.file(), self._validity(), self._file_lock, self._modes

        def work() -> None:
            with lock:
                append(path, validity, pending, modes)

        d = self._run_blocking(work)
        d.addErrback(lambda f: self.log.failure("cache flush failed", f))
        return d

    def _rewrite(self, cache: Cache) -> None:
        """In a thread: the file written whole, with just these entries."""
        with self._file_lock:
            rewrite(self.file(), self._validity(), cache, self._modes)

    def forget(self) -> None:
        """The folder was deleted: nothing set is written, nothing is kept."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.by_key.clear()
        self._pending.clear()
