"""SEARCH evaluation (RFC 3501 section 6.4.4) over a folder's index and, when needed, files.

The search program is first evaluated against the index alone with three-valued
logic (match / no match / needs the message). Flag, UID, sequence, size and
internal-date keys never open a file; only the messages still undecided are
opened, one at a time, and read in a thread in bounded chunks: the header block
(capped) for header keys and SENT* dates, then the decoded text parts (base64
and quoted-printable, in the part's charset) for BODY/TEXT until every string is
found. Matching is a substring test on decoded text under the i;unicode-casemap
comparator (RFC 5255 I18NLEVEL=1, ``casemap``); header values are RFC 2047-decoded
first. SUBJECT, FROM, TO, CC and SENT* are answered from the folder's header table
(``headerindex``, the caller's ``fields``) when given, so a repeated search opens no
file. FROM/TO/CC/BCC match the addresses as
ENVELOPE parses them (``name <mailbox@host>``, comments and quoting gone), like Dovecot,
not the raw field; RECENT/NEW/OLD use the session's \\Recent set. What the MIME
scanner left unparsed past its limits (``mime.Part.overflow``: the parts after the
5,000th, nesting deeper than ``mime.MAX_DEPTH``) is searched as flat text of the part
that holds it, as Dovecot does, never skipped; it streams like any part, so time and
memory stay bounded by the message's size.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import datetime
import email.errors
import email.header
import email.utils
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from twisted.internet.defer import Deferred

from mailhost.imap import envelope, mime, objects
from mailhost.imap.casemap import casemap
from mailhost.imap.parser import SearchKey
from mailhost.store.interfaces import MessageInfo, StoreError

SUPPORTED_CHARSETS = ("UTF-8", "US-ASCII")
MAX_HEADER_READ = 1024 * 1024  # header bytes searched per message; the rest is ignored
READ_CHUNK = 64 * 1024


class BadCharset(Exception):
    """SEARCH CHARSET names a charset we do not support; reply NO [BADCHARSET ...]."""

    def __init__(self, charset: str) -> None:
        super().__init__(charset)
        self.charset = charset
        self.supported = SUPPORTED_CHARSETS


def check_charset(charset: str | None) -> None:
    if charset is not None and charset.upper() not in SUPPORTED_CHARSETS:
        raise BadCharset(charset)


def _needle(value: bytes) -> str:
    return casemap(value.decode("utf-8", "replace"))


_EPOCH = datetime.date(1970, 1, 1)


def _utc_date(ts: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).date()


# -------------------------------------------------------------- index (three-valued)


class _Ctx:
    def __init__(self, infos: Sequence[MessageInfo], seqs: dict[int, int],
                 recent: Collection[int] | None = None) -> None:
        self.max_uid = infos[-1].uid if infos else 0
        self.max_seq = max((seqs.get(i.uid, 0) for i in infos), default=0)
        self.seqs = seqs
        self.recent = recent
        self.saved: dict[int, float] | None = None  # RFC 8514 save dates, if a key asks
        self.folder: Any = None  # for EMAILID (RFC 8474)
        self.now = time.time()  # WITHIN (RFC 5032): OLDER/YOUNGER count back from here

    def is_recent(self, info: MessageInfo) -> bool:
        return info.recent if self.recent is None else info.uid in self.recent


def _has_flag(info: MessageInfo, flag: str) -> bool:
    if flag in info.flags:
        return True
    if flag.startswith("\\"):
        return False
    low = flag.lower()
    return any(f.lower() == low for f in info.flags)


def _index(key: SearchKey, info: MessageInfo, ctx: _Ctx) -> bool | None:
    """True/False from the index alone, or None when the message must be read."""
    op, args = key.op, key.args
    if op == "AND":
        result: bool | None = True
        for k in args:
            r = _index(k, info, ctx)
            if r is False:
                return False
            if r is None:
                result = None
        return result
    if op == "OR":
        result = False
        for k in args:
            r = _index(k, info, ctx)
            if r is True:
                return True
            if r is None:
                result = None
        return result
    if op == "NOT":
        r = _index(args[0], info, ctx)
        return None if r is None else not r
    if op == "ALL":
        return True
    if op == "FLAG":
        return _has_flag(info, args[0])
    if op == "UNFLAG":
        return not _has_flag(info, args[0])
    if op == "RECENT":
        return ctx.is_recent(info)
    if op == "NEW":
        return ctx.is_recent(info) and "\\Seen" not in info.flags
    if op == "OLD":
        return not ctx.is_recent(info)
    if op == "LARGER":
        return info.size > args[0]
    if op == "SMALLER":
        return info.size < args[0]
    if op == "UID":
        return args[0].contains(info.uid, ctx.max_uid)
    if op == "MODSEQ":
        return info.modseq >= args[0]
    if op == "SEQ":
        seq = ctx.seqs.get(info.uid)
        return seq is not None and args[0].contains(seq, ctx.max_seq)
    if op in ("BEFORE", "ON", "SINCE"):
        return _compare_date(op, _utc_date(info.internal_date), args[0])
    if op == "OLDER":
        return info.internal_date <= ctx.now - args[0]
    if op == "YOUNGER":
        return info.internal_date > ctx.now - args[0]
    # SAVED*, SAVEDATESUPPORTED, EMAILID, THREADID; else None: HEADER, ADDRESS, BODY,
    # TEXT, SENT*
    return objects.matches(op, args[0] if args else None, ctx.folder, info, ctx.saved)


def _compare_date(op: str, have: datetime.date | None, want: datetime.date) -> bool:
    if have is None:
        return False
    if op.endswith("BEFORE"):
        return have < want
    if op.endswith("ON"):
        return have == want
    return have >= want


# ------------------------------------------------------------------ content checks


@dataclass
class _Needs:
    """Everything the undecided keys ask of a message's content."""

    headers: set[tuple[str, str]] = field(default_factory=set)  # (lower name, needle)
    addresses: set[tuple[str, str]] = field(default_factory=set)  # (lower name, needle)
    body: set[str] = field(default_factory=set)
    text: set[str] = field(default_factory=set)
    date: bool = False

    def collect(self, key: SearchKey) -> None:
        op, args = key.op, key.args
        if op in ("AND", "OR", "NOT"):
            for k in args:
                self.collect(k)
        elif op == "HEADER":
            self.headers.add((args[0].lower(), _needle(args[1])))
        elif op == "ADDRESS":
            self.addresses.add((args[0].lower(), _needle(args[1])))
        elif op == "BODY":
            self.body.add(_needle(args[0]))
        elif op == "TEXT":
            self.text.add(_needle(args[0]))
        elif op.startswith("SENT"):
            self.date = True

    def indexed(self) -> bool:
        """Whether the header table (``headerindex.Fields``) answers all of this."""
        return (not self.body and not self.text
                and all(h == "subject" for h, _ in self.headers)
                and all(a in ("from", "to", "cc") for a, _ in self.addresses))

    def found_in(self, f: Any) -> _Found:
        """What ``_examine`` would have found, from a message's ``Fields``."""
        found = _Found()
        if f.subject is not None:
            found.headers = {(h, n) for h, n in self.headers if n in f.subject}
        texts = {"from": f.from_text, "to": f.to_text, "cc": f.cc_text}
        found.addresses = {(a, n) for a, n in self.addresses
                           if texts[a] is not None and n in texts[a]}
        if f.day is not None:
            found.date = datetime.date.fromordinal(f.day)
        return found


def fields_matcher(key: SearchKey) -> Callable[[Any], bool] | None:
    """A test of one message's ``headerindex.Fields`` equivalent to ``key``, or None
    when ``key`` needs more than the header table holds (flags, sizes, bodies, other
    headers): SEARCH SUBJECT/FROM/TO/CC/SENT* then needs no MessageInfo at all."""
    op, args = key.op, key.args
    if op in ("AND", "OR"):
        subs = [fields_matcher(k) for k in args]
        if any(m is None for m in subs):
            return None
        tests = [m for m in subs if m is not None]
        if op == "AND":
            return lambda f: all(t(f) for t in tests)
        return lambda f: any(t(f) for t in tests)
    if op == "NOT":
        sub = fields_matcher(args[0])
        return None if sub is None else (lambda f: not sub(f))
    if op == "HEADER" and args[0].lower() == "subject":
        needle = _needle(args[1])
        return lambda f: f.subject is not None and needle in f.subject
    if op == "ADDRESS" and args[0].lower() in ("from", "to", "cc"):
        needle, attr = _needle(args[1]), args[0].lower() + "_text"
        return lambda f: (t := getattr(f, attr)) is not None and needle in t
    if op.startswith("SENT"):
        want = args[0]
        return lambda f: _compare_date(
            op, datetime.date.fromordinal(f.day) if f.day is not None else _EPOCH, want)
    return None


def fields_columns(key: SearchKey) -> set[str]:
    """The ``headerindex.Fields`` columns ``fields_matcher(key)`` reads (the table
    derives them in one pass before the matching)."""
    op, args = key.op, key.args
    if op in ("AND", "OR", "NOT"):
        return set().union(*(fields_columns(k) for k in args))
    if op == "HEADER" and args[0].lower() == "subject":
        return {"subject"}
    if op == "ADDRESS" and args[0].lower() in ("from", "to", "cc"):
        return {args[0].lower() + "_text"}
    if op.startswith("SENT"):
        return {"day"}
    return set()


#: ``HeaderTable.get`` bound to a folder: UIDs -> Deferred of {uid: Fields}.
FieldsLookup = Callable[[list[int]], Deferred]


@dataclass
class _Found:
    headers: set[tuple[str, str]] = field(default_factory=set)
    addresses: set[tuple[str, str]] = field(default_factory=set)
    body: set[str] = field(default_factory=set)
    text: set[str] = field(default_factory=set)
    date: datetime.date | None = None


def _decode_header_value(value: bytes) -> str:
    text = value.decode("utf-8", "replace")
    if "=?" not in text:
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return text


def _address_text(value: bytes) -> str:
    """An address field as FROM/TO/CC/BCC search it: each address parsed as for
    ENVELOPE and written ``name <mailbox@host>`` (the name RFC 2047-decoded), a group
    by its name. ``<user (comment)@ (comment) domain.org>`` is ``user@domain.org``."""
    parts = []
    for a in envelope.parse_addresses(value.decode("utf-8", "replace")):
        if a.host is None:  # a group's start (its name) or end
            if a.mailbox:
                parts.append(_decode_header_value(a.mailbox.encode()) + ":")
            continue
        mailbox = "" if a.mailbox == envelope.MISSING_MAILBOX else a.mailbox or ""
        host = "" if a.host == envelope.MISSING_DOMAIN else a.host
        spec = f"{mailbox}@{host}" if host else mailbox
        if a.name:
            parts.append(f"{_decode_header_value(a.name.encode())} <{spec}>")
        else:
            parts.append(spec)
    return ", ".join(parts)


def _header_fields(block: bytes) -> Iterator[tuple[str, bytes]]:
    """(lower-case name, unfolded value) of each field in a header block."""
    name = None
    value = bytearray()
    for line in block.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            if name is not None:
                break
            continue
        if line[:1] in (b" ", b"\t"):
            if name is not None:
                value += line
            continue
        if name is not None:
            yield name, bytes(value).strip()
        n, colon, v = line.partition(b":")
        if colon:
            name = n.strip().decode("ascii", "replace").lower()
            value = bytearray(v)
        else:
            name = None
    if name is not None:
        yield name, bytes(value).strip()


def _sent_date(value: bytes) -> datetime.date | None:
    parsed = email.utils.parsedate_tz(value.decode("ascii", "replace"))
    if parsed is None:
        return None
    try:
        return datetime.date(parsed[0], parsed[1], parsed[2])
    except (ValueError, TypeError):
        return None


def _read(f: IO[bytes], start: int, end: int) -> Iterator[bytes]:
    f.seek(start)
    left = end - start
    while left > 0:
        chunk = f.read(min(left, READ_CHUNK))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


def _decoded_chunks(f: IO[bytes], part: mime.Part) -> Iterator[str]:
    """The text of one part, transfer-decoded and charset-decoded, in chunks."""
    enc = (part.encoding or "7BIT").upper()
    charset = next((v for k, v in part.params if k.lower() == "charset"), "utf-8")
    try:
        decoder = codecs.getincrementaldecoder(charset)(errors="replace")
    except LookupError:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = b""
    for chunk in _read(f, part.body_start, part.body_end):
        if enc == "BASE64":
            data = pending + b"".join(chunk.split())
            cut = len(data) - len(data) % 4
            pending = data[cut:]
            try:
                raw = base64.b64decode(data[:cut])
            except (binascii.Error, ValueError):
                raw = b""
        elif enc == "QUOTED-PRINTABLE":
            data = pending + chunk
            cut = data.rfind(b"\n") + 1
            pending = data[cut:]
            raw = binascii.a2b_qp(data[:cut])
        else:
            raw = chunk
        yield decoder.decode(raw)
    if pending and enc == "QUOTED-PRINTABLE":
        yield decoder.decode(binascii.a2b_qp(pending))
    yield decoder.decode(b"", final=True)


def _flat_chunks(f: IO[bytes], start: int, end: int) -> Iterator[str]:
    """Raw octets ``[start, end)`` as UTF-8 text (unparsed MIME past the limits)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in _read(f, start, end):
        yield decoder.decode(chunk)
    yield decoder.decode(b"", final=True)


def _search_text(f: IO[bytes], part: mime.Part, needles: set[str]) -> set[str]:
    """Which of ``needles`` occur in the decoded text of ``part`` (stops early)."""
    return _find(_decoded_chunks(f, part), needles)


def _find(chunks: Iterator[str], needles: set[str]) -> set[str]:
    """Which of ``needles`` occur in the text of ``chunks`` (stops early)."""
    found: set[str] = set()
    keep = max((len(n) for n in needles), default=1)
    tail = ""
    for chunk in chunks:
        window = tail + casemap(chunk)
        for n in needles - found:
            if n in window:
                found.add(n)
        if found == needles:
            break
        tail = window[-keep:]
    return found


def _examine(f: IO[bytes], struct: mime.Part | None,
             needs: _Needs) -> tuple[mime.Part, _Found, bool]:
    """Run in a thread: (structure, what was found, whether the structure is new)."""
    fresh = struct is None
    if struct is None:
        struct = mime.scan_file(f)
    found = _Found()
    if needs.headers or needs.addresses or needs.text or needs.date:
        end = min(struct.body_start, struct.header_start + MAX_HEADER_READ)
        block = b"".join(_read(f, struct.header_start, end))
        header_text = []
        for name, value in _header_fields(block):
            decoded = casemap(_decode_header_value(value))
            for hname, needle in needs.headers:
                if hname == name and needle in decoded:
                    found.headers.add((hname, needle))
            if any(aname == name for aname, _ in needs.addresses):
                addresses = casemap(_address_text(value))
                for aname, needle in needs.addresses:
                    if aname == name and needle in addresses:
                        found.addresses.add((aname, needle))
            if needs.date and name == "date" and found.date is None:
                found.date = _sent_date(value)
            if needs.text:
                header_text.append(f"{casemap(name)}: {decoded}")
        joined = "\n".join(header_text)
        found.text = {n for n in needs.text if n in joined}
    body_needles = needs.body | (needs.text - found.text)
    if body_needles:
        for part in struct.walk():
            remaining = (needs.body - found.body) | (needs.text - found.text)
            if not remaining:
                break
            if 0 <= part.overflow < part.body_end:
                hits = _find(_flat_chunks(f, part.overflow, part.body_end), remaining)
            elif part.type != "TEXT" or part.is_multipart or part.size <= 0:
                continue
            else:
                hits = _search_text(f, part, remaining)
            found.body |= hits & needs.body
            found.text |= hits & needs.text
    return struct, found, fresh


def _full(key: SearchKey, info: MessageInfo, ctx: _Ctx, found: _Found) -> bool:
    op, args = key.op, key.args
    if op == "AND":
        return all(_full(k, info, ctx, found) for k in args)
    if op == "OR":
        return any(_full(k, info, ctx, found) for k in args)
    if op == "NOT":
        return not _full(args[0], info, ctx, found)
    if op == "HEADER":
        return (args[0].lower(), _needle(args[1])) in found.headers
    if op == "ADDRESS":
        return (args[0].lower(), _needle(args[1])) in found.addresses
    if op == "BODY":
        return _needle(args[0]) in found.body
    if op == "TEXT":
        return _needle(args[0]) in found.text
    if op.startswith("SENT"):
        # No (or an unreadable) Date: counts as the epoch, as Dovecot does.
        return _compare_date(op, found.date or _EPOCH, args[0])
    r = _index(key, info, ctx)
    return bool(r)


async def _search(folder: Any, infos: Sequence[MessageInfo], seqs: dict[int, int],
                  key: SearchKey, charset: str | None,
                  recent: Collection[int] | None, fields: FieldsLookup | None) -> list[int]:
    check_charset(charset)
    ctx = _Ctx(infos, seqs, recent)
    ctx.folder = folder
    if objects.uses(key, objects.SAVED_KEYS):
        ctx.saved = await folder.save_dates([i.uid for i in infos])
    matched: list[int] = []
    undecided: list[MessageInfo] = []
    for info in infos:
        r = _index(key, info, ctx)
        if r is None:
            undecided.append(info)
        elif r:
            matched.append(info.uid)
    if undecided:
        needs = _Needs()
        needs.collect(key)
        if fields is not None and needs.indexed():
            table = await fields([i.uid for i in undecided])
            for info in undecided:
                f = table.get(info.uid)
                if f is not None and _full(key, info, ctx, needs.found_in(f)):
                    matched.append(info.uid)
            return sorted(matched)
        for info in undecided:
            cached = folder.get_cached(info.uid, "mime")
            struct = mime.loads(cached) if cached else None
            try:
                reader = await folder.read_message(info.uid)
            except StoreError:  # expunged meanwhile: it cannot match
                continue
            try:
                struct, found, fresh = await reader.call(_examine, struct, needs)
            finally:
                reader.close()
            if fresh and struct is not None:
                folder.set_cached(info.uid, "mime", mime.dumps(struct))
            if _full(key, info, ctx, found):
                matched.append(info.uid)
    return sorted(matched)


def search(folder: Any, infos: Sequence[MessageInfo], seqs: dict[int, int], key: SearchKey,
           charset: str | None, recent: Collection[int] | None = None,
           fields: FieldsLookup | None = None) -> Deferred:
    """Deferred firing with the ascending UIDs in ``infos`` that match ``key``.

    ``seqs`` maps UID → sequence number (for sequence-set keys). ``recent`` is the
    session's \\Recent set for RECENT/NEW/OLD (a session claims new messages at SELECT,
    after which the store calls none of them recent); None takes the store's view.
    Fails with ``BadCharset`` for a charset other than UTF-8/US-ASCII. ``fields``
    (``HeaderTable.get`` bound to the folder) answers the header keys it covers.
    """
    return Deferred.fromCoroutine(_search(folder, infos, seqs, key, charset, recent, fields))
