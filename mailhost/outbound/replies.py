"""Reading SMTP replies from a server we do not trust (RFC 5321 §4.2).

A reply is one or more lines ``CODE-text`` ending with ``CODE text`` (or the bare
code). Only that syntax is accepted: a code of three digits whose first is 2 to 5
and second 0 to 5, the same code on every line, then a space, a hyphen or the end
of the line. ``2500 ok`` is not ``250``, and ``abc`` is not a reply at all.

Every reply is bounded in lines and octets: Twisted's ``SMTPClient`` kept every
continuation line of an endless ``250-…`` until the process had grown by gigabytes.
The time a whole reply may take is the caller's (one timer per command, never
restarted by a continuation line).
"""

from __future__ import annotations

from dataclasses import dataclass


class ReplyError(Exception):
    """The server broke the reply syntax or a limit; the text says how."""


@dataclass(frozen=True)
class Reply:
    """One complete reply: its code and its lines' texts (without the code)."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """``CODE text text …`` on one line, for logs and DSN diagnostics."""
        return " ".join(f"{self.code} {' '.join(self.lines)}".split())

    def __str__(self) -> str:
        return self.text


def show_line(line: bytes, limit: int = 60) -> str:
    text = line[:limit].decode("utf-8", "replace")
    return repr(text + ("…" if len(line) > limit else ""))


class ReplyReader:
    """Assembles replies line by line; ``feed`` returns a ``Reply`` when one ends.

    ``max_lines`` and ``max_bytes`` bound one reply; a line past either raises
    ``ReplyError``, so nothing beyond them is ever kept.
    """

    def __init__(self, max_lines: int = 100, max_bytes: int = 65536) -> None:
        self.max_lines = max(1, max_lines)
        self.max_bytes = max(16, max_bytes)
        self._code = b""
        self._lines: list[str] = []
        self._bytes = 0

    @property
    def partial(self) -> int:
        """Lines of an unfinished reply read so far (0 between replies)."""
        return len(self._lines)

    def feed(self, line: bytes) -> Reply | None:
        """One line without its CRLF (a trailing CR is tolerated)."""
        if line.endswith(b"\r"):
            line = line[:-1]
        code, sep = line[:3], line[3:4]
        if (
            len(code) != 3
            or not code.isdigit()
            or code[0:1] not in b"2345"
            or code[1:2] not in b"012345"
            or sep not in (b"", b" ", b"-")
        ):
            raise ReplyError(f"malformed reply line {show_line(line)}")
        if self._lines and code != self._code:
            raise ReplyError(
                f"reply code changed from {self._code.decode()} to {code.decode()} "
                f"within one reply ({show_line(line)})"
            )
        self._bytes += len(line) + 2
        if len(self._lines) >= self.max_lines:
            raise ReplyError(f"reply longer than {self.max_lines} lines")
        if self._bytes > self.max_bytes:
            raise ReplyError(f"reply longer than {self.max_bytes} octets")
        self._code = code
        self._lines.append(line[4:].decode("utf-8", "replace"))
        if sep == b"-":
            return None
        reply = Reply(int(code), tuple(self._lines))
        self._code, self._lines, self._bytes = b"", [], 0
        return reply
