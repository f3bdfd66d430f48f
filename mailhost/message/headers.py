"""Trace headers we add (Return-Path, Received).

SMTP writes ``Received:`` into every copy of a message it accepts; ``Return-Path:``
is added at final delivery only (RFC 5321 §4.4), so the mailbox delivery target
(``mailhost.store.mailbox_target``) writes it, for SMTP, for local delivery of queued
mail and for DSNs alike. The ``Received:`` fields already in a message are counted for
the loop check by ``hops.HopCounter``.
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
                    tid: str, recipient: str | None, when: datetime | None = None,
                    client_name: str | None = None) -> bytes:
    """A Postfix-style ``Received:`` line (RFC 5321 section 4.4), folded, CRLF-ended.

    ``client_name`` is the client's forward-confirmed reverse DNS name, or
    ``"unknown"`` (``from helo (name [ip])``, as Postfix); None when nobody looked."""
    helo_part = _clean(helo) if helo else "unknown"
    ip_literal = f"IPv6:{client_ip}" if ":" in client_ip else client_ip
    name_part = f"{_clean(client_name)} " if client_name else ""
    lines = [
        f"Received: from {helo_part} ({name_part}[{ip_literal}])",
        f"\tby {_clean(hostname)} (mailhost) with {protocol} id {tid}",
    ]
    date = _rfc5322_date(when)
    if recipient is not None:
        lines.append(f"\tfor <{recipient}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")

