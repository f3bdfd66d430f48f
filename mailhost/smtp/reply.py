"""SMTP replies: a code, an RFC 3463 enhanced status code and text, formatted on the wire.

Every reply we send carries an enhanced status code (ENHANCEDSTATUSCODES), so one
small value type both formats them and travels as an exception out of parsers and
policy code. Its text is cleaned on the way out (``mailhost.replytext``): whatever
client input or exception text a reply quotes, no CR, LF, NUL or other control
character reaches the wire, and no line grows past the 512-octet reply limit.
"""

from __future__ import annotations

from collections.abc import Sequence

from mailhost.replytext import clean


class Reply(Exception):
    """One SMTP reply; raised by parsers and policy, written by the protocol."""

    def __init__(self, code: int, status: str, text: str | Sequence[str]) -> None:
        lines = [text] if isinstance(text, str) else list(text)
        super().__init__(f"{code} {status} {lines[0]}")
        self.code = code
        self.status = status
        self.lines = lines

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def is_positive(self) -> bool:
        return self.code < 400

    def to_bytes(self) -> bytes:
        """Wire form: continuation lines use ``code-``, the last ``code SP``. Made
        once per reply: the constant ones (``Ok``, ``354``, the greeting) are sent
        for every message (issue 18)."""
        wire: bytes | None = self.__dict__.get("_wire")
        if wire is None:
            prefix = f"{self.status} " if self.status else ""
            last = len(self.lines) - 1
            out = [f"{self.code}{' ' if i == last else '-'}{prefix}{clean(line)}\r\n"
                   for i, line in enumerate(self.lines)]
            wire = self._wire = "".join(out).encode("utf-8", "replace")
        return wire

    def __repr__(self) -> str:
        return f"Reply({self.code}, {self.status!r}, {self.lines!r})"
