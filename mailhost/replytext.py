"""Reply text that is safe to put on the wire, for SMTP, POP3 and IMAP alike.

A reply may quote what the client sent (a mailbox name, an address) or an exception's
text. Either can hold CR, LF, NUL or other control characters, which would split a
reply into two, inject a line the client takes for the server's, or (NUL) break RFC
3501's rule for IMAP text. Every reply path of the three servers passes its text
through ``clean`` (or ``clean_bytes``), so no control character from anywhere reaches
a client. Each one becomes ``?``. SMTP and POP3 also cut the text to a bounded
length (their reply lines are limited to 512 octets); IMAP does not, since a response
code such as ``[COPYUID ...]`` may legitimately be long.
"""

from __future__ import annotations

import re

#: Longest reply text kept (RFC 5321 allows 512 octets per reply line in all).
MAX_TEXT = 400

# C0 controls (TAB included: replies never need it), DEL, C1 controls, the Unicode
# line and paragraph separators, and lone surrogates (from surrogateescape decoding).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def clean(text: str, limit: int | None = MAX_TEXT) -> str:
    """``text`` with every control character replaced by ``?``, at most ``limit`` chars."""
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return _UNSAFE.sub("?", text)


def clean_bytes(text: bytes, limit: int | None = None) -> bytes:
    """The same for reply text already encoded as UTF-8 (IMAP builds bytes)."""
    if not _UNSAFE_BYTES.search(text) and text.isascii():
        return text if limit is None or len(text) <= limit else clean_bytes(text[:limit], limit)
    return clean(text.decode("utf-8", "replace"), limit).encode("utf-8")


_UNSAFE_BYTES = re.compile(rb"[\x00-\x1f\x7f]")
