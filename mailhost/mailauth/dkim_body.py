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

    def _line(self, line: bytes) -> None:
        if self.relaxed:
            line = _WSP.sub(b" ", line.rstrip(b" \t"))
        if self._open:
            self._emit(line + b"\r\n")
            self._open = False
        elif line:
            self._emit(b"\r\n" * self._pending_empty + line + b"\r\n")
            self._pending_empty = 0
        else:
            self._pending_empty += 1

    def update(self, data: bytes) -> None:
        if self._done:
            raise ValueError("update after digest")
        held = self._held + data
        parts = _LINE_END.split(held)
        for line in parts[:-1]:
            self._line(line)
        rest = parts[-1]
        if len(rest) > MAX_HELD:
            rest = self._cut(rest)
        self._held = rest

    def _cut(self, rest: bytes) -> bytes:
        """Hash the front of an over-long line; keep what a later octet may change."""
        if self.relaxed:
            k = len(rest.rstrip(b" \t"))
        else:
            k = len(rest)
        if k == len(rest) and rest.endswith(b"\r"):
            k -= 1  # may be the CR of a CRLF split across chunks
        if k <= 0:
            # Only blanks (relaxed): they compress to one space or vanish at the line end.
            return b" " if self.relaxed and rest.strip(b" \t") == b"" else rest
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
