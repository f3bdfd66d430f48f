"""DKIM body hashes computed chunk by chunk, so a 50 MB message is signed and verified
in constant memory.

dkimpy wants the whole message as one ``bytes`` and makes several copies of the
body while it canonicalizes (``re.sub`` twice, a slice, the hash input): about four
times the message size at its peak. Everything else dkimpy does (header
canonicalization, the signature over the headers, key parsing, RSA and Ed25519)
works on the header block alone. So the body hash, the only part that reads the
body, is computed here as the message streams past, with the same result as
dkimpy's ``Simple``/``Relaxed.canonicalize_body`` (RFC 6376 §3.4.3, §3.4.4) for any
input; ``tests/mailauth/test_dkim_body.py`` checks that with hypothesis. Like dkimpy
(``rfc822_parse``), a bare LF ends a line as CRLF does.

Memory: a line is held until its end, but a line longer than ``MAX_HELD`` octets is
canonicalized and hashed in pieces (cut after a non-blank octet, so whitespace
compression and trailing-blank removal give the same bytes), so memory stays
bounded whatever the input.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

_LINE_END = re.compile(rb"\r?\n")
_WSP = re.compile(rb"[\t ]+")
_WSP_EOL = re.compile(rb"[\t ]+(?=\r\n)")
MAX_HELD = 64 * 1024
HASHES: dict[str, Callable[[], Any]] = {"sha256": hashlib.sha256, "sha1": hashlib.sha1}


class BodyHasher:
    """The bh= of one (canonicalization, hash, l=) over a body fed in chunks."""

    def __init__(self, canonicalization: str = "relaxed", hash_name: str = "sha256",
                 limit: int | None = None) -> None:
        if canonicalization not in ("simple", "relaxed"):
            raise ValueError(f"unknown body canonicalization {canonicalization!r}")
        self.relaxed = canonicalization == "relaxed"
        self._hash = HASHES[hash_name]()
        self.limit = limit
        self.length = 0  # canonical octets produced (all of them, not only hashed ones)
        self._held = b""
        self._pending_empty = 0
        self._open = False  # part of the current line has been emitted already
        self._emitted = False
        self._done = False

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        self._emitted = True
        if self.limit is not None:
            room = self.limit - self.length
            if room > 0:
                self._hash.update(data[:room])
        else:
            self._hash.update(data)
        self.length += len(data)

    def _start_content(self) -> None:
        if not self._open:
            self._emit(b"\r\n" * self._pending_empty)
            self._pending_empty = 0
            self._open = True

    def update(self, data: bytes) -> None:
        if self._done:
            raise ValueError("update after digest")
        held = self._held + data
        cut = held.rfind(b"\n") + 1
        if cut:
            self._lines(held[:cut])
        rest = held[cut:]
        if len(rest) > MAX_HELD:
            rest = self._cut(rest)
        self._held = rest

    def _lines(self, block: bytes) -> None:
        """Every complete line of ``block`` at once, each regular expression run only
        when a plain substring search says it would change something (most mail has
        CRLF line ends, no trailing blanks, no tabs or double spaces): two ``re.sub``
        per line were the largest part of verifying a small message."""
        canon = block
        if block.count(b"\n") != block.count(b"\r\n"):
            canon = _LINE_END.sub(b"\r\n", block)
        if self.relaxed:
            if b" \r\n" in canon or b"\t\r\n" in canon:
                canon = _WSP_EOL.sub(b"", canon)
            if b"\t" in canon or b"  " in canon:
                canon = _WSP.sub(b" ", canon)
        if self._open:  # the end of a line whose front went out already (_cut)
            first = canon.index(b"\r\n") + 2
            self._emit(canon[:first])
            self._open = False
            canon = canon[first:]
        # Trailing empty lines wait: only a later non-empty line makes them body.
        # (Every LF of canon ends a line, so a CRLF right before the last CRLF means
        # the last line is empty.)
        end, empty = len(canon), 0
        while end >= 2 and (end == 2 or canon[end - 4:end - 2] == b"\r\n"):
            end -= 2
            empty += 1
        if end:
            self._emit(b"\r\n" * self._pending_empty + canon[:end])
            self._pending_empty = empty
        else:
            self._pending_empty += empty

    def _cut(self, rest: bytes) -> bytes:
        """Hash the front of an over-long line; keep what a later octet may change."""
        # A final CR may be half of a CRLF split across chunks: keep it, and (relaxed)
        # the blanks before it, which vanish if it does end the line.
        body = rest[:-1] if rest.endswith(b"\r") else rest
        k = len(body.rstrip(b" \t")) if self.relaxed else len(body)
        if k <= 0:
            # Only blanks (relaxed): they compress to one space or vanish at the line end.
            if self.relaxed and body.strip(b" \t") == b"":
                return (b" " if body else b"") + rest[len(body):]
            return rest
        self._start_content()
        front = rest[:k]
        self._emit(_WSP.sub(b" ", front) if self.relaxed else front)
        return rest[k:]

    def digest(self) -> bytes:
        if not self._done:
            self._done = True
            rest = self._held
            self._held = b""
            if rest or self._open:
                self._start_content()
                self._emit((_WSP.sub(b" ", rest) if self.relaxed else rest) + b"\r\n")
                self._open = False
            if not self._emitted and not self.relaxed:
                self._emit(b"\r\n")  # simple: an empty body is one CRLF
            self._digest = self._hash.digest()
        return self._digest


def split_header_block(head: bytes) -> tuple[bytes, bytes]:
    """(header block up to and including the blank line, first body bytes) of the
    start of a message; the header block is b"" if the blank line is not there yet."""
    m = re.search(rb"\r?\n\r?\n", head)
    if m is None:
        if head.startswith((b"\r\n", b"\n")):
            end = 2 if head.startswith(b"\r\n") else 1
            return head[:end], head[end:]
        return b"", head
    return head[: m.end()], head[m.end():]
