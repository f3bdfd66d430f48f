"""The ``i;unicode-casemap`` comparator (RFC 5051) that I18NLEVEL=1 (RFC 5255) asks of
SEARCH substring matches and SORT/THREAD comparisons.

RFC 5051 maps each character to its *simple* titlecase, then applies NFKD. Python has
only the full mappings, so a character whose full titlecase is more than one character
(``ß`` → ``Ss``) keeps itself, which is what the simple mapping does for them. ASCII
text (almost every header) takes a fast path: ``upper()`` is the titlecase there and
NFKD changes nothing.
"""

from __future__ import annotations

import unicodedata


class _Table(dict[int, str]):
    """``str.translate`` table filled on first sight of each character."""

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        title = ch.title()
        mapped = title if len(title) == 1 else ch
        self[code] = mapped
        return mapped


_TABLE = _Table()


def casemap(text: str) -> str:
    """``text`` as i;unicode-casemap compares it (titlecase, then NFKD)."""
    if text.isascii():
        return text.upper()
    return unicodedata.normalize("NFKD", text.translate(_TABLE))
