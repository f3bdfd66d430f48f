"""Trace headers we add (Return-Path, Received) and the hop counter for mail loops.

The hop counter looks only at the header block, fed incrementally as DATA streams
in, so a loop is caught without ever holding the message in memory.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from email.utils import format_datetime

_UNSAFE = re.compile(r"[^\x21-\x7e]")


def _clean(text: str, limit: int = 255) -> str:
    """Keep client-supplied text printable and bounded in a header."""
    return _UNSAFE.sub("?", text)[:limit]


_date_cache: tuple[int, str] = (0, "")


def _rfc5322_date(when: datetime | None) -> str:
    """RFC 5322 date; the current second's string is reused (it showed in profiles)."""
    global _date_cache
    if when is not None:
        return format_datetime(when)
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, format_datetime(datetime.fromtimestamp(now, UTC)))
    return _date_cache[1]


def return_path_header(sender: str) -> bytes:
    """``Return-Path:`` added at final delivery (RFC 5321 section 4.4)."""
    return f"Return-Path: <{sender}>\r\n".encode()


def received_header(*, helo: str | None, client_ip: str, hostname: str, protocol: str,
                    tid: str, recipient: str | None, when: datetime | None = None) -> bytes:
    """A Postfix-style ``Received:`` line (RFC 5321 section 4.4), folded, CRLF-ended."""
    helo_part = _clean(helo) if helo else "unknown"
    ip_literal = f"IPv6:{client_ip}" if ":" in client_ip else client_ip
    lines = [
        f"Received: from {helo_part} ([{ip_literal}])",
        f"\tby {_clean(hostname)} (mailhost) with {protocol} id {tid}",
    ]
    date = _rfc5322_date(when)
    if recipient is not None:
        lines.append(f"\tfor <{recipient}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


class HopCounter:
    """Counts ``Received:`` fields in the header block of a streamed message."""

    #: Stop looking after this many header octets; a "header" this big is a body.
    MAX_HEADER_BYTES = 1024 * 1024

    def __init__(self, max_line: int = 1000) -> None:
        self.count = 0
        self._seen = 0
        self.done = False
        self._partial = b""
        self._max_line = max_line

    def feed(self, data: bytes) -> None:
        """Feed message bytes (already dot-unstuffed); a no-op once the body starts."""
        if self.done:
            return
        self._seen += len(data)
        if self._seen > self.MAX_HEADER_BYTES:
            self.done = True
            return
        buf = self._partial + data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if line in (b"", b"\r"):
                self.done = True
                self._partial = b""
                return
            if line[:9].lower() == b"received:":
                self.count += 1
        # Only the first bytes of an unfinished line matter for recognising a field name.
        self._partial = buf[start:][: self._max_line]
