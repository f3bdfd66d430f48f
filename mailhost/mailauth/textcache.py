"""Parsed DNS records kept by their text, for SPF, DMARC and DKIM keys alike.

A warm DNS cache must not mean parsing the same record for every message. Keyed by
the text itself, so a changed record is a new entry and the DNS cache's TTL alone
decides when the text is asked again. Bounded: cleared when full, so a flood of
distinct records costs what it cost without the cache. A parse that raises is not kept.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class ParsedByText(Generic[_K, _V]):
    """``get(key, parse)``: ``parse()``'s result for ``key``, computed once."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._parsed: dict[_K, _V] = {}

    def get(self, key: _K, parse: Callable[[], _V]) -> _V:
        found = self._parsed.get(key)
        if found is None:
            found = parse()
            if len(self._parsed) >= self.size:
                self._parsed.clear()
            self._parsed[key] = found
        return found
