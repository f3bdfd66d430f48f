"""A streaming MIME structure scanner: the byte layout of a message, in one pass.

FETCH BODYSTRUCTURE/ENVELOPE and ``BODY[1.2]`` need the part tree with byte
offsets. ``email`` would load the whole message; this scanner is push-based
(``feed`` chunks, then ``finish``) and keeps only the part tree, the headers it
needs (Content-*, and the envelope fields of message-level headers, each capped)
and at most one partial line, so a 100 MB message is scanned in constant memory.
Lines that cannot be boundaries are skipped with ``bytes.find``/``count``, not
looped over in Python.

The result is a tree of ``Part``: header block ``[header_start, body_start)``
(including the blank line), body ``[body_start, body_end)`` (a part's body ends
before the CRLF that precedes the next boundary, RFC 2046), ``lines`` in the body,
the parsed Content-* fields, ``children`` of a multipart and ``message`` (the
embedded message) of a message/rfc822 part.

Past the limits (``MAX_DEPTH`` levels, ``MAX_PARTS`` parts) nothing more is recorded,
but nothing is lost either: the part that holds the unparsed rest gets ``overflow``,
the offset from which its body is raw, unparsed MIME (a multipart whose further parts
were not recorded, or a multipart or message/rfc822 nested too deep). SEARCH reads
that range as flat text, as Dovecot does, so content cannot hide from BODY/TEXT
behind a wide or deep structure (issue 17, item 6). It serialises to compact JSON for
``IFolder.set_cached(uid, "mime", ...)``. Header strings are the raw bytes decoded
as UTF-8 with ``surrogateescape``, so 8-bit bytes survive the round trip exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

CHUNK = 64 * 1024
MAX_HEADER_LINE = 8 * 1024  # longer header lines are truncated (the file keeps them)
MAX_FIELD = 16 * 1024  # a kept header field value is capped at this size
MAX_BOUNDARY_LINE = 1024  # longer lines cannot be boundary delimiters
MAX_DEPTH = 40  # deeper nesting is treated as an opaque leaf
MAX_PARTS = 5000  # further parts are absorbed into the body they appear in
CACHE_VERSION = 2  # 2: ``overflow``

ENVELOPE_FIELDS = (
    "date", "subject", "from", "sender", "reply-to", "to", "cc", "bcc", "in-reply-to",
    "message-id",
)
_CONTENT_FIELDS = (
    "content-type", "content-transfer-encoding", "content-disposition", "content-id",
    "content-description", "content-language", "content-location", "content-md5",
)


def text(raw: bytes) -> str:
    """Header bytes as str, losslessly (8-bit bytes survive via surrogateescape)."""
    return raw.decode("utf-8", "surrogateescape")


def raw(value: str) -> bytes:
    """The inverse of ``text``."""
    return value.encode("utf-8", "surrogateescape")


class Part:
    """One MIME entity: offsets, sizes and the parsed Content-* header fields."""

    __slots__ = (
        "header_start", "body_start", "body_end", "lines", "type", "subtype", "params",
        "has_type", "disposition", "id", "description", "encoding", "language", "location",
        "md5", "children", "message", "env", "overflow", "_lf0", "_boundary", "_fields", "_flen", "_message_level",
    )

    def __init__(self, header_start: int, message_level: bool = False,
                 default_type: tuple[str, str] = ("TEXT", "PLAIN")) -> None:
        self.header_start = header_start
        self.body_start = header_start
        self.body_end = header_start
        self.lines = 0
        self.type, self.subtype = default_type
        self.params: list[list[str]] = (
            [["CHARSET", "US-ASCII"]] if default_type == ("TEXT", "PLAIN") else [])
        self.has_type = False
        self.disposition: list | None = None  # [value, params]
        self.id: str | None = None
        self.description: str | None = None
        self.encoding: str | None = None
        self.language: list[str] | None = None
        self.location: str | None = None
        self.md5: str | None = None
        self.children: list[Part] = []
        self.message: Part | None = None
        self.env: dict[str, str] | None = {} if message_level else None
        #: Offset from which the body is unparsed MIME past the limits, or -1.
        self.overflow = -1
        self._lf0 = 0
        self._boundary: bytes | None = None
        self._fields: list[bytes] = []
        self._flen = 0
        self._message_level = message_level

    @property
    def size(self) -> int:
        return self.body_end - self.body_start

    @property
    def is_multipart(self) -> bool:
        return self.type == "MULTIPART" and bool(self.children)

    @property
    def is_message(self) -> bool:
        return self.message is not None

    def walk(self) -> Iterator[Part]:
        yield self
        for c in self.children:
            yield from c.walk()
        if self.message is not None:
            yield from self.message.walk()

    def to_list(self) -> list:
        return [
            self.header_start, self.body_start, self.body_end, self.lines, self.type,
            self.subtype, self.params, int(self.has_type), self.disposition, self.id,
            self.description, self.encoding, self.language, self.location, self.md5,
            [c.to_list() for c in self.children],
            self.message.to_list() if self.message is not None else None, self.env,
            self.overflow,
        ]

    @classmethod
    def from_list(cls, data: list) -> Part:
        p = cls.__new__(cls)
        (p.header_start, p.body_start, p.body_end, p.lines, p.type, p.subtype, p.params,
         has_type, p.disposition, p.id, p.description, p.encoding, p.language, p.location,
         p.md5, children, message, p.env, p.overflow) = data
        p.has_type = bool(has_type)
        p.children = [cls.from_list(c) for c in children]
        p.message = cls.from_list(message) if message is not None else None
        p._lf0 = 0
        p._boundary = None
        p._fields = []
        p._flen = 0
        p._message_level = p.env is not None
        return p

    def find(self, path: tuple[int, ...]) -> Part | None:
        """The part at an IMAP section path (``()`` is this message), or None.

        Part 1 of a non-multipart entity is its body; the parts of an embedded
        message are numbered as those of its body (RFC 3501 section 6.4.5).
        """
        node: Part = self
        entity: Part = self
        self_step = False
        for i, n in enumerate(path):
            if i:
                if node.message is not None:
                    entity = node.message
                elif node.type == "MULTIPART" and node.children:
                    entity = node
                elif node is not entity and n == 1 and not self_step:
                    self_step = True  # a leaf part's part 1 is itself, once (as Dovecot)
                    continue
                else:
                    return None
            parts = entity.children if entity.type == "MULTIPART" and entity.children else [
                entity]
            if not 0 < n <= len(parts):
                return None
            node = parts[n - 1]
        return node


def dumps(part: Part) -> str:
    return json.dumps([CACHE_VERSION, part.to_list()], separators=(",", ":"))


def loads(data: str) -> Part | None:
    """A Part from the cache, or None if the entry is unreadable or from another version."""
    try:
        version, body = json.loads(data)
        if version != CACHE_VERSION:
            return None
        return Part.from_list(body)
    except (ValueError, TypeError):
        return None


# ------------------------------------------------------------------ header values


def _strip_comments(value: str) -> str:
    """Remove RFC 822 comments outside quoted strings."""
    if "(" not in value:
        return value
    out = []
    depth = 0
    quoted = False
    escape = False
    for ch in value:
        if escape:
            escape = False
            if depth == 0:
                out.append(ch)
            continue
        if ch == "\\":
            escape = True
            if depth == 0:
                out.append(ch)
            continue
        if quoted:
            if ch == '"':
                quoted = False
            out.append(ch)
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth == 0:
            if ch == '"':
                quoted = True
            out.append(ch)
    return "".join(out)


def _split_semicolons(value: str) -> list[str]:
    out = []
    cur = []
    quoted = False
    escape = False
    for ch in value:
        if escape:
            cur.append(ch)
            escape = False
        elif ch == "\\" and quoted:
            cur.append(ch)
            escape = True
        elif ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == ";" and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"':
        body = value[1:-1] if value.endswith('"') else value[1:]
        out = []
        it = iter(body)
        for ch in it:
            if ch == "\\":
                out.append(next(it, ""))
            else:
                out.append(ch)
        return "".join(out)
    # An unquoted value is one token (Dovecot stops at white space too).
    return value.split(None, 1)[0] if value else value


def parse_header_params(value: str) -> tuple[str, list[list[str]]]:
    """``value; name=value; ...`` → (value, [[name, value], ...]), case kept as sent."""
    pieces = _split_semicolons(_strip_comments(value))
    params = []
    for piece in pieces[1:]:
        name, eq, val = piece.partition("=")
        name = name.strip()
        if not eq or not name:
            continue
        params.append([name, _unquote(val)])
    return pieces[0].strip(), params


def _token_ok(s: str) -> bool:
    return bool(s) and all(33 <= ord(c) < 127 and c not in '()<>@,;:\\"/[]?=' for c in s)


# ------------------------------------------------------------------------ scanner


class Scanner:
    """Push-based scanner: ``feed(chunk)`` any number of times, then ``finish()``."""

    def __init__(self) -> None:
        self.root = Part(0, message_level=True)
        self.open: list[Part] = [self.root]
        self.in_header = True
        self.offset = 0  # absolute offset of buf[0]
        self.buf = b""  # an incomplete line carried between feeds (bounded)
        self.mid_line = False  # inside a body line that cannot be a boundary
        self.lf = 0  # LF count before ``offset``
        self.tail = b""  # the last 3 consumed bytes
        self.nparts = 1
        self.after_close = -1  # offset just past the last close-delimiter line

    # -- feeding

    def feed(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        pos = 0
        n = len(data)
        while pos < n:
            if self.mid_line:
                nl = data.find(b"\n", pos)
                end = n if nl < 0 else nl + 1
                self._consume(data, pos, end)
                pos = end
                self.mid_line = nl < 0
                continue
            if not self.in_header and not self._any_boundary():
                self._consume(data, pos, n)
                pos = n
                break
            if not self.in_header:
                # Skip to the next line that starts with "--".
                if not data.startswith(b"--", pos) and not (
                        n - pos < 2 and b"--".startswith(data[pos:])):
                    idx = data.find(b"\n--", pos)
                    if idx < 0:
                        last = data.rfind(b"\n", pos)
                        if last < 0:
                            self._consume(data, pos, n)
                            self.mid_line = True
                            return
                        self._consume(data, pos, last + 1)
                        pos = last + 1
                        continue
                    self._consume(data, pos, idx + 1)
                    pos = idx + 1
                    continue
                limit = MAX_BOUNDARY_LINE
            else:
                limit = MAX_HEADER_LINE
            nl = data.find(b"\n", pos, pos + limit)
            if nl < 0:
                if n - pos < limit:
                    self.buf = data[pos:]  # wait for the rest of this line
                    return
                # Over-long line: not a boundary; in a header it is truncated.
                line = data[pos:pos + limit]
                if self.in_header:
                    self._header_line(line, self.offset, truncated=True)
                self._consume(data, pos, pos + limit)
                pos += limit
                self.mid_line = True
                continue
            line = data[pos:nl + 1]
            self._line(line)
            self._consume(data, pos, nl + 1)
            pos = nl + 1

    def _consume(self, data: bytes, start: int, end: int) -> None:
        if end <= start:
            return
        self.lf += data.count(b"\n", start, end)
        self.tail = (self.tail + data[max(start, end - 3):end])[-3:]
        self.offset += end - start

    def _any_boundary(self) -> bool:
        return any(p._boundary is not None for p in self.open)

    # -- lines

    def _line(self, line: bytes) -> None:
        """A complete line (with its newline) starting at ``self.offset``."""
        off = self.offset
        if line.startswith(b"--") and self._any_boundary():
            content = line.rstrip(b"\r\n")
            for i in range(len(self.open) - 1, -1, -1):
                p = self.open[i]
                b = p._boundary
                if b is None or not content.startswith(b"--" + b):
                    continue
                # Like Dovecot, "--boundary" is matched as a prefix of the line.
                rest = content[len(b) + 2:]
                if rest.startswith(b"--"):
                    self._close_below(i, off)
                    p._boundary = None  # epilogue follows
                    self.in_header = False
                    # Like Dovecot, the close delimiter's own CRLF stays in the
                    # multipart; a boundary right after it takes no CRLF away.
                    self.after_close = off + len(line)
                    return
                self._close_below(i, off)
                self._start_child(p, off + len(line))
                return
        if self.in_header:
            self._header_line(line, off, truncated=False)

    def _body_end_before(self, off: int, body_start: int, keep_crlf: bool) -> tuple[int, int]:
        """Body end before the boundary line at ``off`` and the LF count up to it."""
        if off <= body_start or off == self.after_close or keep_crlf:
            # A header cut short by the boundary keeps its last line's CRLF (Dovecot).
            return off, self.lf
        nl = 2 if self.tail.endswith(b"\r\n") else 1
        return max(body_start, off - nl), self.lf - 1

    def _close(self, p: Part, end: int, lf: int) -> None:
        if p is self.open[-1] and self.in_header:
            # The header never ended: it runs to ``end`` and the body is empty.
            self._flush_field(p)
            p.body_start = end
        if end < p.body_start:
            end = p.body_start
        p.body_end = end
        # Lines are the LFs in the body, as Dovecot counts them.
        p.lines = max(0, lf - p._lf0) if end > p.body_start else 0
        p._fields = []
        if p.message is not None:
            _clamp(p.message, end)


    def _close_below(self, i: int, off: int) -> None:
        # A header cut short by the boundary ends before the CRLF as usual, but the
        # parts around it keep that CRLF (Dovecot's layout).
        keep_crlf = self.in_header
        innermost = self.open[-1]
        for p in reversed(self.open[i + 1:]):
            if p is innermost and keep_crlf:
                end, lf = self._body_end_before(off, p.header_start, False)
            else:
                end, lf = self._body_end_before(off, p.body_start, keep_crlf)
            self._close(p, end, lf)
            self.in_header = False
        del self.open[i + 1:]
        self.in_header = False

    def _start_child(self, parent: Part, start: int) -> None:
        if self.nparts >= MAX_PARTS:
            # Too many parts: keep scanning, but do not record more; the rest of the
            # parent's body is searched as flat text.
            parent._boundary = None
            if parent.overflow < 0:
                parent.overflow = start
            return
        self.nparts += 1
        default = ("MESSAGE", "RFC822") if parent.subtype == "DIGEST" else ("TEXT", "PLAIN")
        child = Part(start, default_type=default)
        parent.children.append(child)
        self.open.append(child)
        self.in_header = True

    # -- headers

    def _header_line(self, line: bytes, off: int, truncated: bool) -> None:
        p = self.open[-1]
        stripped = line.rstrip(b"\r\n") if not truncated else line
        if not truncated and not stripped:
            self._flush_field(p)
            self._end_header(p, off + len(line))
            return
        if stripped[:1] in (b" ", b"\t"):
            if p._fields:
                if p._flen < MAX_FIELD:
                    p._fields.append(stripped)
                    p._flen += len(stripped)
                return
            # A continuation line without a field: tolerated, ignored.
            return
        colon = stripped.find(b":")
        name = stripped[:colon] if colon > 0 else b""
        if colon <= 0 or not name.strip() or any(c <= 32 or c >= 127 for c in name.rstrip()):
            # Not a header line: skipped, the header goes on to the blank line (as
            # Dovecot does).
            self._flush_field(p)
            return
        self._flush_field(p)
        p._fields = [stripped]
        p._flen = len(stripped)

    def _flush_field(self, p: Part) -> None:
        if not p._fields:
            return
        field = b"".join(p._fields)[:MAX_FIELD]
        p._fields = []
        name, _, value = field.partition(b":")
        key = name.strip().lower().decode("ascii", "replace")
        if key in _CONTENT_FIELDS:
            self._content_field(p, key, text(value.strip()))
        if p.env is not None and key in ENVELOPE_FIELDS and key not in p.env:
            # As in Dovecot's ENVELOPE: Date and Subject are trimmed, the message-id
            # fields lose only leading white space.
            trimmed = value.strip() if key in ("date", "subject") else value.lstrip(b" \t")
            p.env[key] = text(trimmed)

    def _content_field(self, p: Part, key: str, value: str) -> None:
        if key == "content-type":
            if p.has_type:
                return
            p.has_type = True
            mtype, params = parse_header_params(value)
            main, slash, sub = mtype.partition("/")
            main, sub = main.strip(), sub.strip()
            if slash and _token_ok(main) and _token_ok(sub):
                p.type, p.subtype, p.params = main.upper(), sub.upper(), params
                if p.type == "TEXT" and not any(k.lower() == "charset" for k, _ in params):
                    p.params = [*params, ["CHARSET", "US-ASCII"]]  # as Dovecot does
            else:
                p.type, p.subtype = "TEXT", "PLAIN"
                p.params = [["CHARSET", "US-ASCII"]]
        elif key == "content-transfer-encoding":
            v = _strip_comments(value).split()
            if len(v) == 1 and p.encoding is None:  # anything else is ignored, as Dovecot does
                p.encoding = v[0].upper()
        elif key == "content-disposition":
            if p.disposition is None:
                disposition, params = parse_header_params(value)
                if disposition:
                    p.disposition = [disposition, params]
        elif key == "content-language":
            if p.language is None:
                langs = [x.split()[0] for x in _strip_comments(value).split(",") if x.strip()]
                p.language = langs or None
        else:
            attr = {"content-id": "id", "content-description": "description",
                    "content-location": "location", "content-md5": "md5"}[key]
            if getattr(p, attr) is None:
                setattr(p, attr, value)

    def _end_header(self, p: Part, body_start: int) -> None:
        """The header of ``p`` ended; decide how to scan its body."""
        self._flush_field(p)
        p.body_start = p.body_end = body_start
        p._lf0 = self.lf + (1 if body_start > self.offset else 0)
        self.in_header = False
        depth = len(self.open)
        if p.type == "MULTIPART":
            boundary = next((v for k, v in p.params if k.lower() == "boundary"), None)
            if boundary and depth < MAX_DEPTH:
                p._boundary = raw(boundary).rstrip(b" \t")
            elif boundary:
                p.overflow = body_start  # nested too deep: its body is flat text
            # Without a boundary its body is opaque; ``finish`` gives it one empty part.
        elif (p.type, p.subtype) == ("MESSAGE", "RFC822") and depth < MAX_DEPTH and (
                self.nparts < MAX_PARTS):
            # Parsed whatever its Content-Transfer-Encoding claims (RFC 2046 allows only
            # identity encodings here), as Dovecot does.
            self.nparts += 1
            child = Part(body_start, message_level=True)
            child._lf0 = p._lf0
            p.message = child
            self.open.append(child)
            self.in_header = True
        elif (p.type, p.subtype) == ("MESSAGE", "RFC822"):
            p.overflow = body_start  # past the limits: the embedded message is flat text

    # -- end

    def finish(self) -> Part:
        """Close every open part at the end of the data; returns the root."""
        if self.buf:
            line = self.buf
            self.buf = b""
            if not self.mid_line:
                self._line(line)
            self._consume(line, 0, len(line))
        end = self.offset
        if self.in_header:
            p = self.open[-1]
            self._flush_field(p)
            p.body_start = end
        for p in reversed(self.open):
            self._close_eof(p, end)
        self.open = []
        for p in self.root.walk():
            if p.type == "MULTIPART" and not p.children:
                # No part was found; BODYSTRUCTURE needs one, so (as Dovecot does) the
                # multipart gets one empty text/plain part.
                empty = Part(p.body_start)
                p.children.append(empty)
        return self.root

    def _close_eof(self, p: Part, end: int) -> None:
        p.body_end = max(end, p.body_start)
        p.lines = max(0, self.lf - p._lf0) if p.body_end > p.body_start else 0
        p._fields = []
        p._boundary = None


def _clamp(p: Part, end: int) -> None:
    """Keep a part inside its parent's body: the CRLF before a boundary belongs to the
    boundary, so a message/rfc822 whose (empty) header took it must give it back."""
    if p.body_end <= end:
        return
    p.body_start = min(p.body_start, end)
    p.body_end = end
    if p.body_end == p.body_start:
        p.lines = 0
    for c in p.children:
        _clamp(c, end)
    if p.message is not None:
        _clamp(p.message, end)


def scan_bytes(data: bytes) -> Part:
    s = Scanner()
    s.feed(data)
    return s.finish()


def scan_file(f: IO[bytes], chunk: int = CHUNK) -> Part:
    """Scan an open message file in bounded chunks (run this in a thread)."""
    s = Scanner()
    while True:
        data = f.read(chunk)
        if not data:
            break
        s.feed(data)
    return s.finish()


def as_dict(part: Part) -> dict[str, Any]:
    """A readable view for tests and debugging."""
    return {
        "type": f"{part.type}/{part.subtype}",
        "header": (part.header_start, part.body_start),
        "body": (part.body_start, part.body_end),
        "lines": part.lines,
        "children": [as_dict(c) for c in part.children],
        "message": as_dict(part.message) if part.message is not None else None,
    }
