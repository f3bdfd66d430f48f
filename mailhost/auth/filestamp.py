"""FileStamp: whether a file changed, stat'ed at most once per reactor turn.

Why: SMTP asks the passwd file (the user, the quota limit) and the aliases file
several times for every message, and each ask was an ``os.stat`` on the reactor
thread (4 per message at 20 sessions x 4 KiB: issue 18). Within one turn of the
reactor (the I/O it handles after one ``epoll_wait``, up to its next timed calls)
the answer is kept; the first ask in the next turn stats again. So an edit that was
finished before a turn began is seen in that turn, as before: a client that got its
reply after the edit is always served from the new file (tests/e2e/test_reload.py).

Off the reactor thread (the CLI, worker threads), or without a reactor, every ask
stats, as it always did.

The stamps kept in one turn are forgotten together, by one ``callLater(0)`` per turn
and reactor, not one per file (passwd and aliases: issue 18).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.python.threadable import isInIOThread

#: (mtime in ns, size) of a file, or None when it does not exist.
Stamp = tuple[int, int] | None

#: id(reactor) -> the stamps kept in its current turn (reactor thread only).
_kept_this_turn: dict[int, list[FileStamp]] = {}


def _turn_over(key: int) -> None:
    for stamp in _kept_this_turn.pop(key, ()):
        stamp.forget()


class FileStamp:
    """The stamp of ``path``, kept for the rest of the reactor turn that read it."""

    def __init__(self, path: str, reactor: Any = None) -> None:
        self.path = path
        self._reactor = reactor
        self._kept = False
        self._stamp: Stamp = None

    def current(self) -> Stamp:
        if self._kept:
            return self._stamp
        try:
            st = os.stat(self.path)
            stamp: Stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if self._reactor is not None and isInIOThread():  # type: ignore[no-untyped-call]
            self._kept, self._stamp = True, stamp
            key = id(self._reactor)
            kept = _kept_this_turn.get(key)
            if kept is None:
                kept = _kept_this_turn[key] = []
                self._reactor.callLater(0, _turn_over, key)  # the next turn stats again
            kept.append(self)
        return stamp

    def forget(self) -> None:
        """Stat again at the next ask (the turn is over, or we wrote the file)."""
        self._kept = False
