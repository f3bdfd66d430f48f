"""Turn the IMAP byte stream into whole commands: lines, literals and limits.

IMAP commands are lines that may carry literals (``{N}``/``{N+}`` then N raw octets,
then the command continues on the next line). Twisted's ``LineReceiver`` drops the
connection on an over-long line and switching it in and out of raw mode for every
literal is awkward, so framing is this small pure state machine instead. It knows
nothing about sockets: the protocol feeds it bytes and pulls events, which makes it
easy to fuzz. Limits are enforced *before* memory is spent: an over-long line is
discarded up to its end, an over-size literal is refused (synchronizing) or swallowed
without being stored (non-synchronizing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailhost.imap.parser import literal_marker as _literal_marker


@dataclass
class FramedCommand:
    """A complete command: ``[line0, lit0, line1, ...]`` as parse_command wants it."""

    segments: list[bytes]


@dataclass
class NeedContinuation:
    """A synchronizing literal is announced: the server must send ``+`` now."""

    tag: str
    line: bytes = b""  # the command's first line (the server's dispatch hook sees it)


@dataclass
class LineTooLong:
    """A line went over the limit; it was discarded up to its end."""

    tag: str | None


@dataclass
class LiteralTooBig:
    """A literal over the limit; the whole command was dropped."""

    tag: str | None
    name: str  # upper-case command name if known ("APPEND"), else ""
    size: int


@dataclass
class TooLong:
    """The command as a whole (many literals) went over the limit."""

    tag: str | None


Event = FramedCommand | NeedContinuation | LineTooLong | LiteralTooBig | TooLong


def _head(line: bytes) -> tuple[str | None, str]:
    """Best-effort tag and command name of a (possibly truncated) first line."""
    parts = line.split(b" ", 3)
    tag = parts[0].decode("ascii", "replace") if parts and parts[0] else None
    name = parts[1].decode("ascii", "replace").upper() if len(parts) > 1 else ""
    if name == "UID" and len(parts) > 2:
        name = parts[2].decode("ascii", "replace").upper()
    if tag is not None and (len(tag) > 64 or not tag.isprintable()):
        tag = None
    return tag, name


class Framer:
    """Incremental IMAP command framer (pure: no I/O)."""

    def __init__(self, max_line: int, max_literal: int,
                 literal_marker: Callable[[bytes], tuple[int, bool] | None] = _literal_marker,
                 max_command: int | None = None) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_command = max_command if max_command is not None else max_literal + 4 * max_line
        self._marker = literal_marker
        self._buf = bytearray()
        self._segments: list[bytes] = []
        self._size = 0
        self._literal_left = 0  # octets of literal still to read
        self._literal_parts: list[bytes] = []
        self._swallow = 0  # octets of a refused literal still to discard
        self._discard_line = False  # discarding up to the next LF
        self._dropping: Event | None = None  # command is being dropped; report at its end
        #: ``sink_for(segments, n)`` may return an object with ``write(bytes)`` that takes
        #: a literal's octets as they arrive (APPEND streams into the store this way);
        #: the command then carries an empty ``{0}`` literal in its place.
        self.sink_for: Callable[[list[bytes], int], Any] | None = None
        self._sink: Any = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def in_command(self) -> bool:
        """True while part of a command (or literal) has been read."""
        return bool(self._segments or self._literal_left or self._swallow or self._dropping)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def take_buffered(self) -> bytes:
        """The octets received after the last whole command, removed (COMPRESS: what
        follows the command is already compressed)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def clear(self) -> None:
        """Forget everything buffered (STARTTLS: never run plaintext-injected input)."""
        sink_for = self.sink_for
        Framer.__init__(self, self.max_line, self.max_literal, self._marker, self.max_command)
        self.sink_for = sink_for

    def abandon(self) -> None:
        """Forget the command under way, which waits for its synchronizing literal's
        ``+`` (the server refused it instead): what follows is a new command."""
        self._segments = []
        self._size = 0
        self._literal_left = 0
        self._literal_parts = []
        self._sink = None

    def next_line(self) -> bytes | None:
        """Pop one raw line without its CRLF (AUTHENTICATE and IDLE continuations).

        An over-long line is returned truncated to ``max_line`` once its end arrives.
        """
        while True:
            if self._discard_line:
                nl = self._buf.find(b"\n")
                if nl < 0:
                    self._buf.clear()
                    return None
                del self._buf[: nl + 1]
                self._discard_line = False
                return b"\0" * self.max_line  # sentinel: over-long line
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.max_line:
                    self._buf.clear()
                    self._discard_line = True
                    continue
                return None
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line:
                return b"\0" * self.max_line
            return line

    def next_event(self) -> Event | None:
        """The next framing event, or None when more input is needed."""
        while True:
            if self._swallow:
                n = min(self._swallow, len(self._buf))
                del self._buf[:n]
                self._swallow -= n
                if self._swallow:
                    return None
                continue
            if self._literal_left:
                n = min(self._literal_left, len(self._buf))
                if n == 0:
                    return None
                if self._sink is not None:
                    self._sink.write(bytes(self._buf[:n]))
                else:
                    self._literal_parts.append(bytes(self._buf[:n]))
                del self._buf[:n]
                self._literal_left -= n
                if self._literal_left:
                    return None
                self._segments.append(b"".join(self._literal_parts))
                self._literal_parts = []
                self._sink = None
                continue
            if self._discard_line:
                nl = self._buf.find(b"\n")
                if nl < 0:
                    self._buf.clear()
                    return None
                del self._buf[: nl + 1]
                self._discard_line = False
                ev, self._dropping = self._dropping, None
                self._segments = []
                self._size = 0
                return ev
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.max_line:
                    self._start_drop(LineTooLong(self._tag_of(bytes(self._buf[:200]))))
                    self._discard_line = True
                    continue
                return None
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line:
                self._start_drop(LineTooLong(self._tag_of(line[:200])))
                ev, self._dropping = self._dropping, None
                self._segments = []
                self._size = 0
                return ev
            if not self._segments and not self._dropping and not line.strip():
                continue  # empty lines between commands are ignored, like Dovecot
            marker = self._marker(line)
            if self._dropping is not None:
                # Inside a dropped command: skip its literals, report at its end.
                if marker is None:
                    ev, self._dropping = self._dropping, None
                    self._segments = []
                    self._size = 0
                    return ev
                n, non_sync = marker
                if non_sync:
                    self._swallow = n
                    continue
                ev, self._dropping = self._dropping, None  # client waits for '+': stop here
                self._segments = []
                self._size = 0
                return ev
            self._segments.append(line)
            self._size += len(line)
            if marker is None:
                segments, self._segments, self._size = self._segments, [], 0
                return FramedCommand(segments)
            n, non_sync = marker
            tag, name = _head(self._segments[0])
            # Only APPEND streams its literal into the store; any other command's
            # literals are held in memory, so they get the line limit, not the
            # APPEND limit (a 64 MiB SEARCH TEXT literal must not be buffered).
            if name == "APPEND":
                lit_limit, cmd_limit = self.max_literal, self.max_command
            else:
                lit_limit = min(self.max_literal, self.max_line)
                cmd_limit = min(self.max_command, 4 * self.max_line)
            if n > lit_limit or self._size + n > cmd_limit:
                big = (LiteralTooBig(tag, name, n) if n > lit_limit else TooLong(tag))
                if non_sync:
                    self._dropping = big
                    self._swallow = n
                    continue
                self._segments = []
                self._size = 0
                return big
            sink = self.sink_for(self._segments, n) if self.sink_for and n else None
            if sink is not None:
                self._sink = sink
                last = self._segments[-1]
                self._segments[-1] = last[:last.rfind(b"{")] + b"{0}"
            else:
                self._size += n
            self._literal_left = n
            if n == 0:
                self._segments.append(b"")
            if not non_sync:
                return NeedContinuation(tag or "*", self._segments[0])

    def _tag_of(self, line: bytes) -> str | None:
        first = self._segments[0] if self._segments else line
        return _head(first)[0]

    def _start_drop(self, ev: Event) -> None:
        self._dropping = ev
