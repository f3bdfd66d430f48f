"""FileStamp: has a small file changed? At most one ``stat`` per moment.

The passwd and aliases files are re-read when they change, so every lookup used to
``stat`` them: about eight times per SMTP message (recipient policy, aliases, quota
limit, rate limits), the largest single cost of the reactor thread in the ingest
benchmark. A stamp taken less than ``ttl`` seconds ago (default 2 ms) is reused: that
is finer than the file system's own timestamps (a kernel tick), which already make a
change within one tick and of the same size invisible.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

#: Seconds a stamp is reused for.
DEFAULT_TTL = 0.002


class FileStamp:
    """``(st_mtime_ns, st_size)`` of ``path``, or None when it does not exist."""

    def __init__(self, path: str, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._ttl = ttl
        self._clock = clock
        self._taken = -1.0  # clock time of the last stat; -1: never
        self._stamp: tuple[int, int] | None = None

    def current(self) -> tuple[int, int] | None:
        now = self._clock()
        if self._taken < 0 or now - self._taken >= self._ttl:
            try:
                st = os.stat(self.path)
                self._stamp = (st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                self._stamp = None
            self._taken = now
        return self._stamp

    def forget(self) -> None:
        """The file was just written by us: look again next time."""
        self._taken = -1.0
