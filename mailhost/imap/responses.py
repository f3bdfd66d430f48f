"""Outcomes a command handler raises instead of writing its own tagged reply."""

from __future__ import annotations


class CommandFailed(Exception):
    """Ends the command with ``<tag> <status> <text>``."""

    status = b"NO"

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class No(CommandFailed):
    status = b"NO"


class Bad(CommandFailed):
    status = b"BAD"


class AlreadyReplied(Exception):
    """The handler sent its own tagged reply (STARTTLS, before the handshake)."""


def format_set(numbers: list[int]) -> bytes:
    """Compact sequence set ``1:3,7`` for COPYUID/APPENDUID (input in the wanted order)."""
    if not numbers:
        return b""
    parts: list[bytes] = []
    start = prev = numbers[0]
    for n in numbers[1:]:
        if n == prev + 1:
            prev = n
            continue
        parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
        start = prev = n
    parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
    return b",".join(parts)
