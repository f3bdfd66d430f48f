"""The IMAP4rev1 command tokenizer and argument grammar (RFC 3501 section 9).

Our own because Twisted's ``parseNestedParens`` turns NIL into None, rejects
``\\"`` in quoted strings and only handles a literal as the last token (see
TWISTED-MAIL-NOTES.md). The protocol (``server.py``) frames the wire into
segments: ``[line0, lit0, line1, lit1, line2]``, every line without its CRLF and,
except the last, still ending with its ``{N}``/``{N+}`` marker. This module turns
those segments into a ``Command`` of tokens:

- ``Atom`` (a ``str``) for atoms, including ``NIL`` (as sent: compare with
  ``.upper()``), flags like ``\\Seen``, sequence sets and fetch attributes with
  their whole ``[section]<partial>``;
- ``bytes`` for quoted strings, ``Literal`` (a ``bytes``) for literals;
- ``list`` for parenthesised lists.

Every malformed input raises ``ParseError``, never anything else.
"""

from __future__ import annotations

import calendar
import datetime
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_DEPTH = 32  # parenthesised lists
# OR/NOT chains: clients build "OR OR OR k1 k2 k3 k4" for many terms, so deeper than
# lists, yet far from Python's recursion limit.
MAX_SEARCH_DEPTH = 256
MAX_NUMBER = 2**32 - 1
#: number64 (RFC 9051 9): message sizes and partial ranges, ``LARGER``/``SMALLER``.
MAX_NUMBER64 = 2**63 - 1

SYSTEM_FLAGS = {
    "\\SEEN": "\\Seen",
    "\\ANSWERED": "\\Answered",
    "\\FLAGGED": "\\Flagged",
    "\\DELETED": "\\Deleted",
    "\\DRAFT": "\\Draft",
}

MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


class ParseError(Exception):
    """A malformed command; the protocol answers ``<tag> BAD <message>``."""

    def __init__(self, tag: str | None, message: str) -> None:
        super().__init__(message)
        self.tag = tag
        self.message = message


class Atom(str):
    """An IMAP atom as sent (case preserved)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"

    @property
    def is_nil(self) -> bool:
        return self.upper() == "NIL"


class Literal(bytes):
    """A string that arrived as a literal (APPEND requires one)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Literal({bytes.__repr__(self)})"


class Literal8(Literal):
    """A ``~{n}`` literal8 (RFC 3516): the one string that may hold NUL octets; a plain
    literal is ``*CHAR8``, NUL excluded (RFC 9051 9, RFC 3501 9), so NUL in one is BAD."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Literal8({bytes.__repr__(self)})"


@dataclass
class Command:
    tag: str
    name: str
    uid: bool = False
    args: list = field(default_factory=list)


# --------------------------------------------------------------------------- tokens

_LITERAL_RE = re.compile(rb"\{(\d{1,20})(\+?)\}\Z")

# ATOM-CHAR plus what astring, list-mailbox, flags and sequence sets allow:
# every printable ASCII byte except SP ( ) { " -- "[" is handled apart (read_atom).
# 8-bit bytes are accepted in atoms when the atom is valid UTF-8 (lenient: some clients
# send UTF-8 mailbox names and search strings unquoted).
_ATOM_BYTES = frozenset(range(0x21, 0x7F)) - frozenset(b'(){"[') | frozenset(range(0x80, 0x100))
#: tag = 1*<any ASTRING-CHAR except "+"> (RFC 9051 9, RFC 3501 9): "[" and "]" included.
_TAG_BYTES = frozenset(range(0x21, 0x7F)) - frozenset(b'(){%*"\\+')


def literal_marker(line: bytes) -> tuple[int, bool] | None:
    """``(N, non_sync)`` if ``line`` ends with ``{N}`` or ``{N+}``, else None."""
    m = _LITERAL_RE.search(line)
    if m is None:
        return None
    return int(m.group(1)), bool(m.group(2))


class _Tokenizer:
    """Walks the segments, yielding tokens; literals are taken from the odd segments."""

    def __init__(self, segments: list[bytes], tag: str | None) -> None:
        if not segments or len(segments) % 2 == 0:
            raise ParseError(tag, "Internal framing error")
        self.segments = segments
        self.tag = tag
        self.seg = 0
        self.line = segments[0]
        self.pos = 0
        self.end = self._compute_end()

    def error(self, message: str) -> ParseError:
        return ParseError(self.tag, message)

    def _compute_end(self) -> int:
        """End of the tokenizable part of the current line (before the literal marker)."""
        if self.seg + 1 < len(self.segments):
            m = _LITERAL_RE.search(self.line)
            if m is None:
                raise self.error("Literal data without a literal marker")
            start = m.start()
            if start and self.line[start - 1] == 0x7E:  # "~{n}": a literal8 (RFC 3516)
                start -= 1
            return start
        return len(self.line)

    def _line_end(self) -> int:
        return self.end

    def at_end(self) -> bool:
        return self.seg == len(self.segments) - 1 and self.pos >= len(self.line)

    def peek(self) -> int | None:
        """Next byte, or -1 at a literal marker, or None at the very end."""
        end = self._line_end()
        if self.pos < end:
            return self.line[self.pos]
        if self.seg + 1 < len(self.segments):
            return -1
        return None

    def skip_spaces(self) -> bool:
        """Skip SP; True if at least one was skipped."""
        start = self.pos
        line = self.line
        while self.pos < len(line) and line[self.pos] == 0x20:
            self.pos += 1
        return self.pos > start

    def read_literal(self) -> Literal:
        data = self.segments[self.seg + 1]
        m = _LITERAL_RE.search(self.line)
        assert m is not None
        if int(m.group(1)) != len(data):
            raise self.error("Literal length does not match its data")
        binary = m.start() > 0 and self.line[m.start() - 1] == 0x7E  # "~{n}"
        if not binary and b"\0" in data:
            raise self.error("NUL in a literal: binary data goes in a literal8, ~{n}"
                             " (RFC 3516)")
        self.seg += 2
        self.line = self.segments[self.seg]
        self.pos = 0
        self.end = self._compute_end()
        return Literal8(data) if binary else Literal(data)

    def read_quoted(self) -> bytes:
        line = self.line
        i = self.pos + 1
        out = bytearray()
        end = self._line_end()
        while True:
            j = i
            # Fast path: copy runs of ordinary bytes.
            while j < end and line[j] not in (0x22, 0x5C, 0x00):
                j += 1
            out += line[i:j]
            if j >= end:
                raise self.error("Unterminated quoted string")
            c = line[j]
            if c == 0x22:
                self.pos = j + 1
                return bytes(out)
            if c == 0x00:
                raise self.error("NUL in quoted string")
            if j + 1 >= end or line[j + 1] not in (0x22, 0x5C):
                raise self.error("Bad escape in quoted string")
            out.append(line[j + 1])
            i = j + 2

    def read_atom(self) -> Atom:
        line = self.line
        end = self._line_end()
        i = self.pos
        while i < end:
            c = line[i]
            if c in _ATOM_BYTES:
                i += 1
            elif c == 0x5B:
                # "[" opens a section that runs to the matching "]", spaces allowed
                # (BODY[HEADER.FIELDS (A B)]). Unmatched it is an ordinary ATOM-CHAR
                # (only "]" is a resp-special): SELECT foo[bar, LIST "" foo[%.
                j = self._match_bracket(i, end)
                i = i + 1 if j is None else j + 1
            else:
                break
        if i == self.pos:
            raise self.error(f"Unexpected character {bytes([line[i]])!r}" if i < end
                             else "Missing argument")
        text = line[self.pos:i]
        self.pos = i
        try:
            return Atom(text.decode("utf-8"))
        except UnicodeDecodeError:
            raise self.error("Invalid 8-bit character in atom") from None

    def _match_bracket(self, i: int, end: int) -> int | None:
        """Index of the "]" closing the "[" at ``i``; None if the line has none (or
        a byte no section may hold comes first)."""
        line = self.line
        depth = 0
        in_quote = False
        while i < end:
            c = line[i]
            if c < 0x20 or c > 0x7E:
                return None
            if in_quote:
                if c == 0x5C:
                    i += 1
                elif c == 0x22:
                    in_quote = False
            elif c == 0x22:
                in_quote = True
            elif c == 0x5B:
                depth += 1
            elif c == 0x5D:
                depth -= 1
                if depth == 0:
                    return i
            i += 1
        return None


def _read_tokens(tok: _Tokenizer, depth: int) -> list:
    """Read space-separated tokens until the end (depth 0) or a closing paren."""
    out: list = []
    need_sep = False
    while True:
        had_space = tok.skip_spaces()
        c = tok.peek()
        if c is None:
            if depth:
                raise tok.error("Unterminated parenthesised list")
            return out
        if c == 0x29:  # ")"
            if not depth:
                raise tok.error("Unexpected )")
            tok.pos += 1
            return out
        if need_sep and not had_space:
            raise tok.error("Missing space between arguments")
        if c == -1:
            out.append(tok.read_literal())
        elif c == 0x28:  # "("
            if depth + 1 > MAX_DEPTH:
                raise tok.error("Too deeply nested")
            tok.pos += 1
            out.append(_read_tokens(tok, depth + 1))
        elif c == 0x22:
            out.append(tok.read_quoted())
        elif c == 0x7B:  # "{" not at the end of the line
            raise tok.error("Literal marker must end the line")
        elif c < 0x20 or c == 0x7F:
            raise tok.error("Bad character in command")
        else:
            out.append(tok.read_atom())
        need_sep = True


def tokenize(segments: list[bytes], tag: str | None = None) -> list:
    """Tokens of the framed segments (no tag/name handling)."""
    return _read_tokens(_Tokenizer(segments, tag), 0)


_NAME_RE = re.compile(r"[A-Z][A-Z0-9._-]*\Z", re.ASCII)


def parse_command(segments: list[bytes]) -> Command:
    """Tag, command name and argument tokens of one framed command."""
    first = segments[0] if segments else b""
    sp = first.find(b" ")
    raw_tag = first if sp < 0 else first[:sp]
    tag = None
    if raw_tag and all(c in _TAG_BYTES for c in raw_tag):
        tag = raw_tag.decode("ascii")
    if tag is None:
        raise ParseError(None, "Missing or invalid tag")
    if sp < 0:
        raise ParseError(tag, "Missing command")
    tokens = tokenize(segments, tag)
    # tokens[0] is the tag itself (already validated as an atom).
    if len(tokens) < 2 or not isinstance(tokens[1], Atom):
        raise ParseError(tag, "Missing command")
    name = tokens[1].upper()
    if not _NAME_RE.match(name):
        raise ParseError(tag, "Invalid command name")
    args = tokens[2:]
    uid = False
    if name == "UID":
        if not args or not isinstance(args[0], Atom):
            raise ParseError(tag, "UID needs a command")
        name = args[0].upper()
        if name not in ("FETCH", "STORE", "SEARCH", "COPY", "MOVE", "EXPUNGE", "SORT",
                        "THREAD"):
            raise ParseError(tag, f"Unknown UID command {name}")
        uid = True
        args = args[1:]
    return Command(tag=tag, name=name, uid=uid, args=args)


# ----------------------------------------------------------------- simple arguments


def _err(message: str) -> ParseError:
    """A ParseError without a tag; the protocol adds the command's tag."""
    return ParseError(None, message)


def as_string(token: object, what: str = "string") -> bytes:
    """An astring/string argument as bytes."""
    if isinstance(token, Atom):
        return token.encode("utf-8")
    if isinstance(token, bytes):
        return bytes(token)
    raise _err(f"Expected {what}")


def parse_number(token: object, nonzero: bool = False, top: int = MAX_NUMBER) -> int:
    """A number (32-bit unless ``top`` says otherwise: ``MAX_NUMBER64``)."""
    if not isinstance(token, Atom) or not token.isdigit() or not token.isascii():
        raise _err("Expected a number")
    if len(token) > 20:
        raise _err("Number out of range")
    n = int(token)
    if n > top or (nonzero and n == 0):
        raise _err("Number out of range")
    return n


@dataclass(frozen=True)
class SequenceSet:
    """A parsed sequence set; ``None`` in a range stands for ``*`` (the largest).
    ``saved`` is SEARCHRES's ``$`` (RFC 5182): the session's saved search result, which
    ``SelectedMailbox.resolve`` and SEARCH substitute; its ``ranges`` are empty."""

    ranges: tuple[tuple[int | None, int | None], ...]
    saved: bool = False

    def _bounds(self, largest: int) -> Iterable[tuple[int, int]]:
        for lo, hi in self.ranges:
            a = largest if lo is None else lo
            b = largest if hi is None else hi
            if a > b:
                a, b = b, a
            yield a, b

    def resolve(self, largest: int) -> list[int]:
        """Sorted distinct numbers in 1..largest (``*`` is ``largest``)."""
        if largest <= 0:
            return []
        seen: set[int] = set()
        for a, b in self._bounds(largest):
            seen.update(range(max(a, 1), min(b, largest) + 1))
        return sorted(seen)

    def contains(self, n: int, largest: int) -> bool:
        """Membership without expanding; ``*`` is ``largest``."""
        return any(a <= n <= b for a, b in self._bounds(largest))

    def __str__(self) -> str:
        if self.saved:
            return "$"
        parts = []
        for lo, hi in self.ranges:
            s = "*" if lo is None else str(lo)
            if hi != lo:
                s += ":" + ("*" if hi is None else str(hi))
            parts.append(s)
        return ",".join(parts)


_SEQ_RE = re.compile(r"(?:\d+|\*)(?::(?:\d+|\*))?\Z", re.ASCII)


def parse_sequence_set(token: object) -> SequenceSet:
    if not isinstance(token, Atom) or not token:
        raise _err("Expected a sequence set")
    if token == "$":
        return SequenceSet((), saved=True)
    ranges = []
    for part in token.split(","):
        if not _SEQ_RE.match(part):
            raise _err(f"Invalid sequence set {token!s}")
        lo_s, _, hi_s = part.partition(":")
        lo = None if lo_s == "*" else int(lo_s)
        hi = lo if not hi_s else (None if hi_s == "*" else int(hi_s))
        for n in (lo, hi):
            if n is not None and not 0 < n <= MAX_NUMBER:
                raise _err(f"Invalid sequence number in {token!s}")
        ranges.append((lo, hi))
    return SequenceSet(tuple(ranges))


def parse_flag(token: object, allow_recent: bool = False, allow_wildcard: bool = False) -> str:
    """A system flag (canonical case) or a keyword; ``NIL`` is a keyword like any atom."""
    if not isinstance(token, Atom) or not token or not token.isascii():
        raise _err("Expected a flag")
    if token.startswith("\\"):
        up = token.upper()
        if up in SYSTEM_FLAGS:
            return SYSTEM_FLAGS[up]
        if up == "\\RECENT" and allow_recent:
            return "\\Recent"
        if token == "\\*" and allow_wildcard:
            return "\\*"
        raise _err(f"Invalid system flag {token!s}")
    if any(c in token for c in "\\%*]"):
        raise _err(f"Invalid keyword {token!s}")
    return str(token)


def parse_flag_list(token: object) -> list[str]:
    """A ``(flag ...)`` list, or a single flag atom."""
    items = token if isinstance(token, list) else [token]
    out: list[str] = []
    for item in items:
        flag = parse_flag(item)
        if flag not in out:
            out.append(flag)
    return out


def parse_store(args: list) -> tuple[str, bool, list[str]]:
    """``(mode, silent, flags)`` from STORE's arguments after the sequence set."""
    if len(args) < 2 or not isinstance(args[0], Atom):
        raise _err("STORE expects FLAGS and a flag list")
    what = args[0].upper()
    mode = "replace"
    if what.startswith("+"):
        mode, what = "add", what[1:]
    elif what.startswith("-"):
        mode, what = "remove", what[1:]
    if what == "FLAGS":
        silent = False
    elif what == "FLAGS.SILENT":
        silent = True
    else:
        raise _err(f"Invalid STORE item {args[0]!s}")
    rest = args[1:]
    if len(rest) == 1 and isinstance(rest[0], list):
        flags = parse_flag_list(rest[0])
    else:
        flags = parse_flag_list(list(rest))
    return mode, silent, flags


def parse_datetime(value: bytes | str) -> float:
    """IMAP date-time ``"dd-Mon-yyyy hh:mm:ss +zzzz"`` (without quotes) → POSIX time."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise _err("Invalid date-time") from None
    m = re.fullmatch(
        r"([ \d]?\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)", value,
        re.ASCII,
    )
    if m is None:
        raise _err("Invalid date-time")
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    try:
        month = MONTHS.index(mon.upper()) + 1
        dt = datetime.datetime(int(year), month, int(day.strip()), int(hh), int(mm), int(ss))
    except ValueError:
        raise _err("Invalid date-time") from None
    if int(zm) > 59:
        raise _err("Invalid time zone")
    offset = (int(zh) * 60 + int(zm)) * 60 * (1 if sign == "+" else -1)
    return float(calendar.timegm(dt.timetuple()) - offset)


def parse_date(value: str | bytes) -> datetime.date:
    """IMAP date ``d-Mon-yyyy`` (atom or quoted) → date."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise _err("Invalid date") from None
    m = re.fullmatch(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})", str(value), re.ASCII)
    if m is None:
        raise _err(f"Invalid date {value!s}")
    try:
        return datetime.date(int(m.group(3)), MONTHS.index(m.group(2).upper()) + 1,
                             int(m.group(1)))
    except ValueError:
        raise _err(f"Invalid date {value!s}") from None


def parse_append(args: list) -> tuple[bytes, list[tuple[list[str], float | None, bytes]]]:
    """``(mailbox, [(flags, date, message), ...])`` from APPEND's arguments: one message,
    or several (MULTIAPPEND, RFC 3502), each with its own optional flags and date."""
    if len(args) < 2:
        raise _err("APPEND expects a mailbox and a message literal")
    mailbox = as_string(args[0], "mailbox name")
    rest = list(args[1:])
    messages: list[tuple[list[str], float | None, bytes]] = []
    while rest:
        flags: list[str] = []
        date = None
        if isinstance(rest[0], list):
            flags = parse_flag_list(rest.pop(0))
        if rest and isinstance(rest[0], bytes) and not isinstance(rest[0], Literal):
            date = parse_datetime(rest.pop(0))
        if not rest:
            raise _err("APPEND message must be a literal")
        message = rest.pop(0)
        if not isinstance(message, Literal):
            raise _err("APPEND message must be a literal" if not messages
                       else "Too many APPEND arguments")
        messages.append((flags, date, bytes(message)))
    return mailbox, messages


STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE", "APPENDLIMIT",
                "DELETED", "DELETED-STORAGE", "HIGHESTMODSEQ", "MAILBOXID")


def parse_status_items(token: object) -> list[str]:
    if not isinstance(token, list) or not token:
        raise _err("STATUS expects a list of items")
    out = []
    for item in token:
        if not isinstance(item, Atom) or item.upper() not in STATUS_ITEMS:
            raise _err(f"Invalid STATUS item {item!r}")
        if item.upper() not in out:
            out.append(item.upper())
    return out


# --------------------------------------------------------------------------- FETCH


@dataclass(frozen=True)
class Section:
    """A ``[section]`` spec: part path, then HEADER/HEADER.FIELDS[.NOT]/TEXT/MIME or none."""

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def render(self) -> str:
        """As it is named in a response (header names upper-cased, like Dovecot)."""
        bits = [str(p) for p in self.part]
        if self.text:
            t = self.text
            if self.fields:
                t += " (" + " ".join(f.upper() for f in self.fields) + ")"
            bits.append(t)
        return "[" + ".".join(bits) + "]"


@dataclass(frozen=True)
class FetchItem:
    """One FETCH attribute; ``response_name`` is how the response labels it."""

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    #: ``PREVIEW (LAZY)`` (RFC 8970): NIL rather than wait for a preview not yet made.
    lazy: bool = False
    #: ENVELOPE to a session that takes UTF-8 in quoted strings (``rev2.utf8_items``).
    utf8: bool = False

    @property
    def peek(self) -> bool:
        return self.name == "BODY.PEEK"

    @property
    def response_name(self) -> str:
        if self.section is None:
            return self.name
        if self.name.startswith("BINARY"):  # RFC 3516
            out = ("BINARY.SIZE" if self.name == "BINARY.SIZE" else "BINARY") \
                + self.section.render()
        else:
            out = "BODY" + self.section.render()
        if self.partial is not None:
            out += f"<{self.partial[0]}>"
        return out


_SIMPLE_ITEMS = {
    "FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY", "BODYSTRUCTURE",
    "RFC822", "RFC822.HEADER", "RFC822.TEXT", "PREVIEW",
    "SAVEDATE", "EMAILID", "THREADID",  # RFC 8514, RFC 8474 (mailhost.imap.objects)
}
_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_FETCH_RE = re.compile(r"(BODY(?:\.PEEK)?)\[(.*)\](?:<(\d+)\.(\d+)>)?\Z", re.S | re.I | re.A)
_BINARY_RE = re.compile(r"(BINARY(?:\.PEEK|\.SIZE)?)\[([0-9.]*)\](?:<(\d+)\.(\d+)>)?\Z",
                        re.I | re.A)
_PART_RE = re.compile(r"([1-9]\d*)(\.|\Z)", re.ASCII)
_SECTION_TEXTS = ("HEADER.FIELDS.NOT", "HEADER.FIELDS", "HEADER", "TEXT", "MIME")
_BAD_FIELD_BYTES = frozenset(b'(){"\\%*]:')


def parse_section(text: str) -> Section:
    """The inside of ``[...]``."""
    part: list[int] = []
    rest = text
    while True:
        m = _PART_RE.match(rest)
        if m is None:
            break
        n = int(m.group(1))
        if n > MAX_NUMBER:
            raise _err("Section part number out of range")
        part.append(n)
        rest = rest[m.end():]
        if not m.group(2):
            break
        if not rest:
            raise _err(f"Invalid section [{text}]")
    kind = None
    fields_s = None
    if rest:
        up = rest.upper()
        for candidate in _SECTION_TEXTS:
            if up == candidate:
                kind = candidate
                break
            if up.startswith(candidate + " (") and up.endswith(")"):
                kind = candidate
                fields_s = rest[len(candidate) + 2:-1]
                break
        else:
            raise _err(f"Invalid section [{text}]")
    if kind == "MIME" and not part:
        raise _err("MIME needs a part number")
    fields: tuple[str, ...] = ()
    if kind in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        if fields_s is None:
            raise _err(f"{kind} needs a list of header names")
        try:
            tokens = tokenize([fields_s.encode("ascii")])
        except (ParseError, UnicodeEncodeError):
            raise _err("Invalid header name list") from None
        names = []
        for t in tokens:
            if isinstance(t, list):
                raise _err("Invalid header name list")
            name = as_string(t, "header name")
            if not name or any(c <= 0x20 or c >= 0x7F or c in _BAD_FIELD_BYTES for c in name):
                raise _err("Invalid header name")
            names.append(name.decode("ascii"))
        if not names:
            raise _err(f"{kind} needs at least one header name")
        fields = tuple(names)
    elif fields_s is not None:
        raise _err(f"Invalid section [{text}]")
    return Section(tuple(part), kind, fields)


def parse_fetch_att(token: object) -> FetchItem:
    if not isinstance(token, Atom):
        raise _err("Invalid FETCH attribute")
    up = token.upper()
    if up in _SIMPLE_ITEMS:
        return FetchItem(up)
    m = _FETCH_RE.match(token) or _BINARY_RE.match(token)
    if m is None:
        raise _err(f"Invalid FETCH attribute {token!s}")
    if m.re is _BINARY_RE and m.group(1).upper() == "BINARY.SIZE" and m.group(3) is not None:
        raise _err("BINARY.SIZE takes no partial range")
    name, section_s, start, length = m.groups()
    partial = None
    if start is not None:
        if len(start) > 20 or len(length) > 20:
            raise _err("Invalid partial range")
        s, n = int(start), int(length)
        if s > MAX_NUMBER64 or n > MAX_NUMBER64 or n == 0:  # number64 (RFC 9051)
            raise _err("Invalid partial range")
        partial = (s, n)
    return FetchItem(name.upper(), parse_section(section_s), partial)


def parse_fetch_items(args: list) -> list[FetchItem]:
    """FETCH's item argument(s) after the sequence set; macros are expanded."""
    if len(args) != 1:
        raise _err("FETCH expects one item or a list of items")
    spec = args[0]
    if isinstance(spec, Atom) and spec.upper() in _MACROS:
        return [FetchItem(n) for n in _MACROS[spec.upper()]]
    atts = spec if isinstance(spec, list) else [spec]
    if not atts:
        raise _err("Empty FETCH item list")
    out: list[FetchItem] = []
    i = 0
    while i < len(atts):
        item = parse_fetch_att(atts[i])
        i += 1
        if item.name == "PREVIEW" and i < len(atts) and isinstance(atts[i], list):
            modifiers = [m.upper() for m in atts[i] if isinstance(m, Atom)]
            if len(modifiers) != len(atts[i]) or set(modifiers) - {"LAZY"}:
                raise _err("PREVIEW takes only the LAZY modifier")
            item = FetchItem("PREVIEW", lazy="LAZY" in modifiers)
            i += 1
        if item not in out:
            out.append(item)
    return out


# -------------------------------------------------------------------------- SEARCH


@dataclass(frozen=True)
class SearchKey:
    """One node of a search program.

    ``op`` is the upper-cased key (``ALL``, ``FLAG``, ``UNFLAG``, ``AND``, ``OR``, ``NOT``,
    ``SEQ``, ``UID``, ``HEADER``, ``ADDRESS`` (FROM/TO/CC/BCC: field name, string),
    ``BODY``, ``TEXT``, ``LARGER``, ``SMALLER``, ``BEFORE``,
    ``ON``, ``SINCE``, ``SENTBEFORE``, ``SENTON``, ``SENTSINCE``, ``NEW``, ``OLD``,
    ``RECENT``, ``OLDER``, ``YOUNGER`` (seconds)); ``args`` its operands (sub-keys, flag names, bytes, dates, numbers).
    """

    op: str
    args: tuple = ()


_FLAG_KEYS = {
    "ANSWERED": ("FLAG", "\\Answered"),
    "DELETED": ("FLAG", "\\Deleted"),
    "DRAFT": ("FLAG", "\\Draft"),
    "FLAGGED": ("FLAG", "\\Flagged"),
    "SEEN": ("FLAG", "\\Seen"),
    "UNANSWERED": ("UNFLAG", "\\Answered"),
    "UNDELETED": ("UNFLAG", "\\Deleted"),
    "UNDRAFT": ("UNFLAG", "\\Draft"),
    "UNFLAGGED": ("UNFLAG", "\\Flagged"),
    "UNSEEN": ("UNFLAG", "\\Seen"),
}
#: Address keys match the addresses as ENVELOPE shows them, not the raw header text
#: (``HEADER FROM x`` still searches the raw text, as RFC 3501 says).
_ADDRESS_KEYS = {"BCC", "CC", "FROM", "TO"}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE",
              "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"}  # RFC 8514
_NULLARY = {"ALL", "NEW", "OLD", "RECENT", "SAVEDATESUPPORTED"}


class _SearchParser:
    def __init__(self, tokens: list) -> None:
        self.tokens = tokens
        self.pos = 0

    def next(self, what: str) -> object:
        if self.pos >= len(self.tokens):
            raise _err(f"Missing {what} in SEARCH")
        t = self.tokens[self.pos]
        self.pos += 1
        return t

    def key(self, depth: int) -> SearchKey:
        if depth > MAX_SEARCH_DEPTH:
            raise _err("SEARCH nested too deeply")
        t = self.next("search key")
        if isinstance(t, list):
            if not t:
                raise _err("Empty SEARCH list")
            sub = _SearchParser(t)
            keys = []
            while sub.pos < len(t):
                keys.append(sub.key(depth + 1))
            return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
        if not isinstance(t, Atom):
            raise _err("Invalid SEARCH key")
        up = t.upper()
        if up in _NULLARY:
            return SearchKey(up)
        if up in _FLAG_KEYS:
            op, flag = _FLAG_KEYS[up]
            return SearchKey(op, (flag,))
        if up in ("KEYWORD", "UNKEYWORD"):
            flag = parse_flag(self.next("keyword"))
            return SearchKey("FLAG" if up == "KEYWORD" else "UNFLAG", (flag,))
        if up in _ADDRESS_KEYS:
            return SearchKey("ADDRESS", (up, as_string(self.next("string"))))
        if up == "SUBJECT":
            return SearchKey("HEADER", (up, as_string(self.next("string"))))
        if up == "HEADER":
            name = as_string(self.next("header name")).decode("ascii", "replace")
            return SearchKey("HEADER", (name.upper(), as_string(self.next("string"))))
        if up in ("BODY", "TEXT"):
            return SearchKey(up, (as_string(self.next("string")),))
        if up in _DATE_KEYS:
            d = self.next("date")
            if isinstance(d, list):
                raise _err("Invalid date")
            return SearchKey(up, (parse_date(as_string(d)),))
        if up in ("LARGER", "SMALLER"):
            return SearchKey(up, (parse_number(self.next("number"), top=MAX_NUMBER64),))
        if up in ("OLDER", "YOUNGER"):  # WITHIN (RFC 5032): seconds before now
            return SearchKey(up, (parse_number(self.next("interval"), nonzero=True),))
        if up == "NOT":
            return SearchKey("NOT", (self.key(depth + 1),))
        if up == "OR":
            a = self.key(depth + 1)
            b = self.key(depth + 1)
            return SearchKey("OR", (a, b))
        if up == "UID":
            return SearchKey("UID", (parse_sequence_set(self.next("UID set")),))
        if up in ("EMAILID", "THREADID"):  # RFC 8474
            value = self.next("object id")
            if isinstance(value, list):
                raise _err(f"Invalid {up}")
            return SearchKey(up, (as_string(value).decode("ascii", "replace"),))
        if up == "MODSEQ":  # RFC 7162 3.1.5: MODSEQ [entry-name entry-type] n
            value = self.next("mod-sequence")
            if not isinstance(value, Atom) or not value.isdigit():
                self.next("entry type")  # a (quoted) entry name: its type follows
                value = self.next("mod-sequence")
            if not isinstance(value, Atom) or not value.isdigit() or int(value) >= 2**63:
                raise _err("Invalid mod-sequence")
            return SearchKey("MODSEQ", (int(value),))
        if up and (up[0].isdigit() or up[0] in "*$"):
            return SearchKey("SEQ", (parse_sequence_set(t),))
        raise _err(f"Unknown SEARCH key {t!s}")


def parse_search(args: list) -> tuple[str | None, SearchKey]:
    """``(charset, key)`` from SEARCH's arguments; several keys mean AND."""
    tokens = list(args)
    charset = None
    if tokens and isinstance(tokens[0], Atom) and tokens[0].upper() == "CHARSET":
        if len(tokens) < 2 or isinstance(tokens[1], list):
            raise _err("CHARSET needs a name")
        charset = as_string(tokens[1]).decode("ascii", "replace")
        tokens = tokens[2:]
    if not tokens:
        raise _err("SEARCH needs a search key")
    p = _SearchParser(tokens)
    keys = []
    while p.pos < len(tokens):
        keys.append(p.key(0))
    return charset, keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
