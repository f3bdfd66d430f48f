"""The aliases file: ``alias@domain: target, target`` and catch-all ``@domain: user``.

Like Postfix's virtual alias maps: targets may be aliases themselves (expanded
recursively, loops cut), a catch-all applies only when no user or alias matches.
Re-read when the file changes on disk.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from mailhost.auth.filestamp import FileStamp
from mailhost.auth.passwd import normalize_address

log = Logger()


def parse_aliases(text: str, source: str = "aliases") -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, colon, targets = line.partition(":")
        name = normalize_address(name)
        if not colon or not name or "@" not in name:
            log.warn("{source}:{n}: expected 'alias@domain: target, ...'; ignored", source=source, n=n)
            continue
        table.setdefault(name, []).extend(
            normalize_address(t) for t in targets.split(",") if t.strip()
        )
    return table


class AliasesFile:
    """An aliases table loaded from a file and reloaded when it changes."""

    def __init__(self, path: str, reactor: Any = None) -> None:
        """``reactor``: given, the file is stat'ed at most once per reactor turn
        (mailhost.auth.filestamp)."""
        self.path = path
        self._file_stamp = FileStamp(path, reactor)
        self._stamp: tuple[int, int] | None = None
        self._table: dict[str, list[str]] = {}

    def table(self) -> dict[str, list[str]]:
        stamp = self._file_stamp.current()
        if stamp != self._stamp:
            self._stamp = stamp
            if stamp is None:
                self._table = {}
            else:
                with open(self.path, encoding="utf-8") as f:
                    self._table = parse_aliases(f.read(), self.path)
        return self._table
