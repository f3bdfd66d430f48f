"""The header fields SORT, THREAD and SEARCH keep per message, read once per folder.

SORT (DATE/SUBJECT/FROM/TO/CC/DISPLAY*), THREAD and the SEARCH keys SUBJECT, FROM,
TO, CC and SENT* need a few header fields of every message. Reading 100k message files
for each such command is what a server must not do, so each message's fields are read
once, reduced to what those commands compare (``Fields``: i;unicode-casemap forms, the
sent date, the base subject, the message-id and the parent chain for REFERENCES), and
kept:

- in memory, in one ``HeaderTable`` per live folder object, shared by every session
  (``HeaderTables``, held by the IMAP factory, weakly keyed by folder);
- on disk through the store's declared per-message cache (``IFolder.set_cached`` under
  ``CACHE_KEY``), so a restart reloads them without opening a message file. A message's
  bytes never change under its UID, so an entry is valid until the message goes, and
  the store drops it then.

Messages not yet known are read ``BULK`` at a time through ``IHeaderBlocks``, which
Maildir and PostgreSQL offer: one call reads the header blocks of the whole batch in
the store's thread (Maildir: a few system calls per file; PostgreSQL: a query or two)
and parses them there, so the reactor only files the results between batches. A store
without it (memory) has the files of a batch of ``BATCH`` opened
(``IFolder.open_message``) and one ``IMessageReader.call`` runs the reading and
parsing of the whole batch in the store's thread pool.

What is kept per message is small, and derived only when asked (issue 16: the first
``SEARCH SUBJECT`` on 100k messages spent ~100 us per message in ``parse_fields``
deriving all fifteen fields, and the derived text per message, held both as a
``Fields`` tuple and as the store's cache text, was ~100 MB):

- the fill extracts only the raw values of the eight header fields that matter
  (``raw_record``: one regex finds their lines, no decoding) and keeps them as one
  text of a line per field, which is also the store's cache text (the same string
  object, held once);
- the derived forms are computed per group of columns (the date; the subject; the
  base subject; each address field; the message-id; the parents) the first time a command reads one,
  for the messages it reads, and kept in position-indexed column lists: SEARCH
  SUBJECT decodes subjects only, SORT (DATE) parses dates only.

``get`` answers with a mapping of UID to a ``Fields``-like row view; ``parse_fields``
still derives a whole ``Fields`` from a header block (the same functions do both).
"""

from __future__ import annotations

import calendar
import datetime
import email.utils
import json
import re
import sys
import time
import weakref
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import pairwise
from typing import IO, Any, NamedTuple

from twisted.internet.defer import Deferred, DeferredLock
from twisted.python.failure import Failure

from mailhost.imap import envelope
from mailhost.imap.basesubject import base_subject
from mailhost.imap.casemap import casemap
from mailhost.imap.search import _address_text, _decode_header_value
from mailhost.imap.selected import folder_columns
from mailhost.store.interfaces import IFolder, IHeaderBlocks, StoreError

#: The key under which a message's raw header values live in the store's per-message
#: cache (``sortf1`` held the derived ``Fields``; its entries are no longer read).
CACHE_KEY = "sortf2"
#: Messages whose headers one thread job reads (and whose files are open at once).
BATCH = 64
#: Messages whose header blocks one ``IHeaderBlocks.read_headers`` call reads.
BULK = 1000
#: Batches in flight at most (so at most BATCH * PARALLEL files open per fill).
PARALLEL = 3
#: A batch slower than this per message waited on the disk (a cold cache): then one
#: more batch goes in flight, up to PARALLEL. From the page cache a message takes
#: about 30 us, and batches in parallel only contend for the GIL and the directory
#: (100k messages: 2.9 s one at a time, 4.8 s three at a time); read from the disk,
#: 90 us, and three at a time were 15% faster (9.0 -> 7.8 s).
DISK_BOUND = 60e-6
#: Header bytes read per message; fields beyond are ignored (as SEARCH's own limit).
MAX_HEAD = 256 * 1024
_HEAD_CHUNK = 16 * 1024
_MSGID = re.compile(r"<([^<>\s]+)>")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
#: ``Name <mailbox@host>`` with a plain (unencoded, unquoted or simply quoted) name: the
#: usual From/To, parsed without the full tokenizer (the same result).
_NAMED_ADDR = re.compile(
    r"\s*(?:\"([^\"\\]*)\"|([A-Za-z0-9!#$%&'*+/?^_`{|}~.-]+(?: [A-Za-z0-9!#$%&'*+/?^_`{|}~.-]+)*))"
    r"\s*<([^\s<>()\",;:@\\\[\]]+)@([^\s<>()\",;:@\\\[\]]+)>\s*\Z")
#: The usual ``Date:`` (RFC 5322 3.3 with a numeric zone); anything else goes through
#: ``email.utils``.
_DATE = re.compile(
    r"\s*(?:[A-Za-z]{3},\s*)?(\d{1,2})\s+([A-Za-z]{3})\s+(\d{4})\s+(\d{1,2}):(\d{2})"
    r"(?::(\d{2}))?\s+([+-])(\d{2})(\d{2})\s*(?:\([^()]*\)\s*)?\Z")
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_SIMPLE_ADDR = re.compile(r"\s*([^\s<>()\",;:@\\\[\]]+)@([^\s<>()\",;:@\\\[\]]+)\s*\Z")


class Fields(NamedTuple):
    """What SORT, THREAD and SEARCH compare of one message (casemapped strings)."""

    date: float | None  # the Date header as a UTC timestamp; None: absent or unreadable
    day: int | None  # the Date header's own calendar day (SENT*), as a date ordinal
    subject: str | None  # every Subject field, decoded, casemapped, "\n"-joined
    base: str  # the casemapped base subject of the first Subject (RFC 5256 2.1)
    reply: bool  # the subject is a reply or forward (RFC 5256 2.1)
    from_text: str | None  # FROM as SEARCH matches it (search._address_text), casemapped
    from_mailbox: str  # the first From address's mailbox, or a leading group's name (SORT FROM)
    from_display: str  # the first From's display name, else its address (DISPLAYFROM)
    to_text: str | None
    to_mailbox: str
    to_display: str
    cc_text: str | None
    cc_mailbox: str
    message_id: str | None
    parents: tuple[str, ...]  # References, else the first In-Reply-To id (RFC 5256 3)


_WANTED = frozenset({"date", "subject", "from", "to", "cc", "message-id", "references",
                     "in-reply-to"})


def _head(f: IO[bytes]) -> bytes:
    """The header block of a message (at most MAX_HEAD octets)."""
    out = bytearray()
    while len(out) < MAX_HEAD:
        chunk = f.read(_HEAD_CHUNK)
        if not chunk:
            break
        start = max(0, len(out) - 3)
        out += chunk
        end = out.find(b"\r\n\r\n", start)
        if end < 0:
            end = out.find(b"\n\n", start)
        if end >= 0:
            del out[end + 2:]
            break
    return bytes(out)


def _sent(value: bytes) -> tuple[float | None, int | None]:
    """(UTC timestamp, the header's own day as an ordinal) of a Date field."""
    text = value.decode("ascii", "replace")
    m = _DATE.match(text)
    if m is not None and m.group(2).lower() in _MONTHS:
        day, mon, year = int(m.group(1)), _MONTHS[m.group(2).lower()], int(m.group(3))
        hour, minute, second = int(m.group(4)), int(m.group(5)), int(m.group(6) or 0)
        offset = (int(m.group(8)) * 3600 + int(m.group(9)) * 60) * (
            -1 if m.group(7) == "-" else 1)
        try:
            d = datetime.date(year, mon, day)
        except ValueError:
            d = None
        if d is not None and hour < 24 and minute < 60 and second < 61:
            return (float(calendar.timegm((year, mon, day, hour, minute, second)) - offset),
                    d.toordinal())
    parsed = email.utils.parsedate_tz(text)
    if parsed is None:
        return None, None
    try:
        return (float(email.utils.mktime_tz(parsed)),
                datetime.date(parsed[0], parsed[1], parsed[2]).toordinal())
    except (ValueError, TypeError, OverflowError):
        return None, None


def _first_address(value: str) -> tuple[str, str]:
    """(mailbox, display) of the first address of an address-list field."""
    m = _SIMPLE_ADDR.match(value)
    if m is not None:
        return m.group(1), f"{m.group(1)}@{m.group(2)}"
    m = _NAMED_ADDR.match(value)
    if m is not None:
        name = m.group(1) if m.group(1) is not None else m.group(2)
        if name.strip():
            return m.group(3), name.strip()
    for a in envelope.parse_addresses(value):
        if a.host is None:
            if a.mailbox:  # a group comes first: its name stands for it, as in Dovecot
                name = _decode_header_value(a.mailbox.encode())
                return name, name
            continue
        mailbox = "" if a.mailbox in (None, envelope.MISSING_MAILBOX) else a.mailbox
        host = "" if a.host == envelope.MISSING_DOMAIN else a.host
        if a.name:
            display = _decode_header_value(a.name.encode())
        else:
            display = f"{mailbox}@{host}" if host else mailbox or ""
        return mailbox or "", display
    return "", ""


#: The raw values a ``raw_record`` keeps, in its order (subject: every Subject field).
_SLOTS = ("date", "subject", "from", "to", "cc", "message-id", "references", "in-reply-to")
_SLOT = {name: i for i, name in enumerate(_SLOTS)}


#: A line of an unfolded header block that is one of ``_SLOTS``: (name, value). The
#: whitespace allowed around the name is what ``bytes.strip`` drops.
_WANTED_LINE = re.compile(
    rb"^[ \t\r\x0b\x0c]*(" + b"|".join(re.escape(n.encode()) for n in _SLOTS)
    + rb")[ \t\r\x0b\x0c]*:([^\n]*)", re.IGNORECASE | re.MULTILINE)


def _raw_values(block: bytes) -> list[Any]:
    """The first value of each of ``_SLOTS`` in a header block (None: absent), with
    the subject slot a list of every Subject field's value (None: none).

    Each line of the unfolded block is a field: its name is what precedes the first
    colon, stripped and lower-cased, its value what follows, stripped (lines with no
    colon are no field). One regex finds the lines of the wanted fields, so a
    message's Received, DKIM and other lines cost no Python step each (issue 16: the
    first SEARCH SUBJECT reads 100k headers; tests/imap/test_headerindex.py checks it
    against the line-by-line reading it replaced)."""
    values: list[Any] = [None] * len(_SLOTS)
    slot = _SLOT
    if b"\n " in block or b"\n\t" in block:  # folded lines (else _FOLD finds none)
        block = _FOLD.sub(b"", block)
    for name, value in _WANTED_LINE.findall(block):
        i = slot.get(name.decode("ascii").lower())
        if i is None:
            continue
        value = value.strip()
        if i == 1:
            if values[1] is None:
                values[1] = [value]
            else:
                values[1].append(value)
        elif values[i] is None:
            values[i] = value
    return values


#: The slots a record holds one line each of, in order; every Subject value follows.
_LINE_SLOTS = tuple(i for i in range(len(_SLOTS)) if i != 1)


def raw_record(block: bytes) -> str:
    """What the table keeps of a header block (pure; runs in a worker thread): the
    ``_raw_values`` as text, octets as latin-1 characters so any header round-trips
    and an ASCII one stays a compact string.

    One line per slot but the subject (``_LINE_SLOTS``; empty: absent, else ``=`` and
    the value), then ``=`` and each Subject value: an unfolded value holds no LF, so
    a split parses it, where JSON cost a C encoder and decoder pass each (issue 16).
    Records cached by an older mailhost are JSON lists (they start with ``[``, which
    this never does) and are still read."""
    values = _raw_values(block)
    parts = [b"" if (v := values[i]) is None else b"=" + v for i in _LINE_SLOTS]
    if values[1] is not None:
        parts += [b"=" + v for v in values[1]]
    return b"\n".join(parts).decode("latin-1")


def _record_values(text: str) -> list[Any] | None:
    """``_raw_values`` back from a ``raw_record`` text (None: not one)."""
    if text.startswith("["):
        return _json_record_values(text)
    try:
        parts = text.encode("latin-1").split(b"\n")
    except UnicodeEncodeError:
        return None
    n = len(_LINE_SLOTS)
    if len(parts) < n:
        return None
    values: list[Any] = [None] * len(_SLOTS)
    for i, part in zip(_LINE_SLOTS, parts, strict=False):
        if part:
            if part[:1] != b"=":
                return None
            values[i] = part[1:]
    if len(parts) > n:
        subjects = parts[n:]
        if any(part[:1] != b"=" for part in subjects):
            return None
        values[1] = [part[1:] for part in subjects]
    return values


def _record_subjects(text: str) -> list[Any]:
    """``_record_values`` with the subject slot only (the others None; all None for
    what is not a record), for the columns derived from it (SEARCH SUBJECT, SORT
    (SUBJECT), THREAD's base subjects): the fixed lines are checked, not parsed."""
    if text.startswith("["):
        return _record_values(text) or [None] * len(_SLOTS)
    values: list[Any] = [None] * len(_SLOTS)
    n = len(_LINE_SLOTS)
    parts = text.split("\n", n)
    if len(parts) < n or any(p and p[0] != "=" for p in parts[:n]):
        return values
    if len(parts) > n:
        subjects = parts[n].split("\n")
        if any(p[:1] != "=" for p in subjects):
            return values
        try:
            values[1] = [p[1:].encode("latin-1") for p in subjects]
        except UnicodeEncodeError:
            pass
    return values


def _json_record_values(text: str) -> list[Any] | None:
    """``_record_values`` of a record as an older mailhost cached it (a JSON list)."""
    try:
        v = json.loads(text)
        if not isinstance(v, list) or len(v) != len(_SLOTS):
            return None
        out: list[Any] = []
        for i, x in enumerate(v):
            if x is None:
                out.append(None)
            elif i == 1:
                out.append([y.encode("latin-1") for y in x])
            else:
                out.append(x.encode("latin-1"))
        return out
    except (ValueError, TypeError, AttributeError, UnicodeEncodeError):
        return None


def _addresses(value: bytes | None) -> tuple[str | None, str, str]:
    """(SEARCH text, SORT mailbox, DISPLAY name), casemapped, of an address field."""
    if value is None:
        return None, "", ""
    text = value.decode("utf-8", "replace")
    mailbox, display = _first_address(text)
    m = _SIMPLE_ADDR.match(text)
    if m is not None:
        search_text = f"{m.group(1)}@{m.group(2)}"
    elif (n := _NAMED_ADDR.match(text)) is not None and \
            (n.group(1) if n.group(1) is not None else n.group(2)).strip():
        name = n.group(1) if n.group(1) is not None else n.group(2)
        search_text = f"{name.strip()} <{n.group(3)}@{n.group(4)}>"
    else:
        search_text = _address_text(value)
    i = sys.intern
    return i(casemap(search_text)), i(casemap(mailbox)), i(casemap(display))


def _date_of(value: bytes | None) -> tuple[float | None, int | None]:
    return _sent(value) if value is not None else (None, None)


def _subject_of(values: list[bytes] | None) -> str | None:
    """Every Subject decoded, casemapped and "\n"-joined (what SEARCH SUBJECT reads)."""
    if not values:
        return None
    return sys.intern(casemap("\n".join(_decode_header_value(v) for v in values)))


def _base_of(values: list[bytes] | None) -> tuple[str, bool]:
    """(the casemapped base subject of the first Subject, whether it is a reply)."""
    base, reply = base_subject(_decode_header_value(values[0]) if values else "")
    return sys.intern(casemap(base)), reply


def _message_id_of(value: bytes | None) -> str | None:
    if value is None:
        return None
    m = _MSGID.search(value.decode("utf-8", "replace"))
    return sys.intern(m.group(1)) if m is not None else None


def _parents_of(refs: bytes | None, in_reply_to: bytes | None) -> tuple[str, ...]:
    """References, else the first In-Reply-To id (RFC 5256 3)."""
    parents: tuple[str, ...] = ()
    if refs is not None:
        parents = tuple(_MSGID.findall(refs.decode("utf-8", "replace")))
    if not parents and in_reply_to is not None:
        parents = tuple(_MSGID.findall(in_reply_to.decode("utf-8", "replace"))[:1])
    return tuple(sys.intern(p) for p in parents)


def _fields_from(values: list[Any]) -> Fields:
    date, day = _date_of(values[0])
    subject = _subject_of(values[1])
    base, reply = _base_of(values[1])
    from_text, from_mailbox, from_display = _addresses(values[2])
    to_text, to_mailbox, to_display = _addresses(values[3])
    cc_text, cc_mailbox, _ = _addresses(values[4])
    return Fields(date, day, subject, base, reply, from_text, from_mailbox, from_display,
                  to_text, to_mailbox, to_display, cc_text, cc_mailbox,
                  _message_id_of(values[5]), _parents_of(values[6], values[7]))


def parse_fields(block: bytes) -> Fields:
    """``Fields`` of a header block (pure)."""
    return _fields_from(_raw_values(block))


def _read_batch(first: IO[bytes], rest: Sequence[tuple[int, IO[bytes]]],
                first_uid: int) -> list[tuple[int, str]]:
    """Run in a thread: (uid, ``raw_record`` text) of each opened message."""
    out = []
    for uid, f in ((first_uid, first), *rest):
        try:
            if f is not first:
                f.seek(0)
            text = raw_record(_head(f))
        except OSError:
            continue
        finally:
            if f is not first:
                f.close()
        out.append((uid, text))
    return out


def _record_of(f: IO[bytes]) -> str | None:
    """Run in a store thread: the ``raw_record`` text of one message (None: unreadable)."""
    try:
        return raw_record(_head(f))
    except OSError:
        return None


#: Each column's group (derived together, from the same raw values) and place in it.
_GROUPS: dict[str, tuple[Any, ...]] = {
    "date": (lambda v: _date_of(v[0]), ("date", "day")),
    "subject": (lambda v: (_subject_of(v[1]),), ("subject",)),
    "base": (lambda v: _base_of(v[1]), ("base", "reply")),
    "from": (lambda v: _addresses(v[2]), ("from_text", "from_mailbox", "from_display")),
    "to": (lambda v: _addresses(v[3]), ("to_text", "to_mailbox", "to_display")),
    "cc": (lambda v: _addresses(v[4])[:2], ("cc_text", "cc_mailbox")),
    "message_id": (lambda v: (_message_id_of(v[5]),), ("message_id",)),
    "parents": (lambda v: (_parents_of(v[6], v[7]),), ("parents",)),
}
_COLUMN_GROUP = {col: group for group, (_, cols) in _GROUPS.items() for col in cols}
#: The groups that read the subject slot only (``_record_subjects`` parses no other).
_SUBJECT_DERIVES = frozenset({_GROUPS["subject"][0], _GROUPS["base"][0]})
_UNSET: Any = object()
_EMPTY = _fields_from([None] * len(_SLOTS))


class _Row:
    """One message's ``Fields``, as attributes derived on first read (see the module)."""

    __slots__ = ("_table", "_row")

    def __init__(self, table: HeaderTable, row: int) -> None:
        self._table = table
        self._row = row



def _column(name: str) -> property:
    """A ``_Row`` attribute: the column's value, derived on first read. A property per
    column, not ``__getattr__``, which runs only after a failed lookup (SORT reads one
    of these per message per comparison key)."""

    def get(row: _Row) -> Any:
        col = row._table._columns.get(name)
        if col is not None and row._row < len(col):
            value = col[row._row]
            if value is not _UNSET:
                return value
        return row._table.column_value(name, row._row)

    return property(get)


for _name in _COLUMN_GROUP:
    setattr(_Row, _name, _column(_name))


class _UidRows:
    """UID -> row of the table, as two arrays in UID order (a dict of 100k UIDs to
    row numbers was ~8 MB held for good, issue 16). Lookups of many ascending UIDs at
    once (``positions``) are one comparison when they are all the table holds."""

    def __init__(self, uids: Iterable[int] = (), rows: Iterable[int] = ()) -> None:
        self.uids = array("q", uids)
        self.rows = array("q", rows)

    def get(self, uid: int, default: Any = None) -> Any:
        uids = self.uids
        i = bisect_left(uids, uid)
        return self.rows[i] if i < len(uids) and uids[i] == uid else default

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self.get(uid) is not None

    def __len__(self) -> int:
        return len(self.uids)

    def __iter__(self) -> Iterator[int]:
        return iter(self.uids)

    def add(self, uid: int, row: int) -> None:
        uids = self.uids
        if not uids or uid > uids[-1]:
            uids.append(uid)
            self.rows.append(row)
        else:
            i = bisect_left(uids, uid)
            uids.insert(i, uid)
            self.rows.insert(i, row)

    def positions(self, want: Sequence[int]) -> list[int]:
        """The row of each of ``want`` (-1: not in the table)."""
        uids, rows = self.uids, self.rows
        if len(want) == len(uids) and array("q", want) == uids:
            return list(rows)
        if any(a >= b for a, b in pairwise(want)):  # not ascending: one by one
            return [self.get(u, -1) for u in want]
        out = []
        i, n = 0, len(uids)
        for u in want:  # a merge of two ascending sequences
            while i < n and uids[i] < u:
                i += 1
            out.append(rows[i] if i < n and uids[i] == u else -1)
        return out


class _Rows(Mapping[int, Any]):
    """The table as ``{uid: Fields-like row}`` (what ``HeaderTable.get`` fires with)."""

    def __init__(self, table: HeaderTable) -> None:
        self._table = table

    def __getitem__(self, uid: int) -> Any:
        row = self._table.rows.get(uid)
        if row is None:
            raise KeyError(uid)
        return _Row(self._table, row)

    def get(self, uid: int, default: Any = None) -> Any:
        row = self._table.rows.get(uid)
        return default if row is None else _Row(self._table, row)

    def __contains__(self, uid: object) -> bool:
        return uid in self._table.rows

    def __iter__(self) -> Iterator[int]:
        return iter(self._table.rows)

    def __len__(self) -> int:
        return len(self._table.rows)


class HeaderTable:
    """The raw header values of one folder's messages, by UID, filled on demand, and
    their derived ``Fields`` columns, filled on first read."""

    def __init__(self) -> None:
        #: UID -> row in ``_records`` and the columns.
        self.rows = _UidRows()
        self._records: list[str] = []
        self._columns: dict[str, list[Any]] = {}
        self._last: tuple[int, list[Any]] = (-1, [])  # the last row's raw values
        self._lock = DeferredLock()
        #: Messages read from their files (not the cache): for tests and the bench.
        self.files_read = 0
        #: THREAD's last answer per algorithm: ((algorithm, UIDs), its ``* THREAD`` data
        #: by UID), kept as bytes: a tree of 100k nodes would cost tens of MB.
        self.threads: dict[str, tuple[Any, bytes]] = {}

    @property
    def fields(self) -> Mapping[int, Any]:
        """``{uid: Fields-like row}`` of every message known so far."""
        return _Rows(self)

    def _add(self, uid: int, record: str) -> None:
        row = self.rows.get(uid)
        if row is None:
            self.rows.add(uid, len(self._records))
            self._records.append(record)
        else:
            self._records[row] = record

    def positions(self, uids: Sequence[int]) -> list[int]:
        """The row of each UID (-1: not in the table)."""
        return self.rows.positions(uids)

    def row(self, row: int) -> Any:
        """The ``Fields``-like view of a row (``positions``)."""
        return _Row(self, row)

    def values(self, name: str, rows: Sequence[int], keep: bool = True) -> list[Any]:
        """A column's values at these rows (-1: the value of a message without that
        header), derived first where need be: SORT and THREAD read whole columns
        this way, with no row object per message. With ``keep`` false, a column not
        derived yet is derived for this answer only, and not kept."""
        col = self._columns.get(name)
        size = len(self._records)
        if not keep and col is None:
            derive, names = _GROUPS[_COLUMN_GROUP[name]]
            at, default = names.index(name), getattr(_EMPTY, name)
            return [self._derived(derive, names, r)[at] if r >= 0 else default
                    for r in rows]
        if col is None or len(col) < size or _UNSET in col:
            self._derive_rows(_COLUMN_GROUP[name], rows)
            col = self._columns[name]
        default = getattr(_EMPTY, name)
        if col is None:
            return [default] * len(rows)
        if -1 not in rows:
            return list(map(col.__getitem__, rows))
        return [col[r] if r >= 0 else default for r in rows]

    def derive(self, names: Iterable[str], rows: Sequence[int]) -> None:
        """Derive these columns at these rows where not done yet (and keep them): what a
        search reads row by row next, derived in one loop per column group rather than
        on each first read."""
        for group in {_COLUMN_GROUP[name] for name in names}:
            self._derive_rows(group, rows)

    def iter_values(self, name: str, rows: Sequence[int]) -> Iterator[Any]:
        """``values(name, rows, keep=False)`` one at a time: a column not derived yet
        is derived row by row and not kept, with no list of it (THREAD's message-ids
        and parent chains: two columns read by one walk share each row's parse)."""
        col = self._columns.get(name)
        derive, names = _GROUPS[_COLUMN_GROUP[name]]
        at, default = names.index(name), getattr(_EMPTY, name)
        for r in rows:
            if r < 0:
                yield default
            elif col is not None and r < len(col) and col[r] is not _UNSET:
                yield col[r]
            else:
                yield self._derived(derive, names, r)[at]

    def column_value(self, name: str, row: int) -> Any:
        """A derived field of a row; its group is derived first if need be."""
        col = self._columns.get(name)
        if col is None or row >= len(col) or col[row] is _UNSET:
            self._derive(_COLUMN_GROUP[name], row)
            col = self._columns[name]
        return col[row]

    def _derived(self, derive: Any, names: tuple[str, ...], row: int) -> tuple[Any, ...]:
        """A column group's values of a row (``_GROUPS``), computed now."""
        if derive in _SUBJECT_DERIVES:
            values = _record_subjects(self._records[row])
            try:
                return tuple(derive(values))
            except Exception:  # as below
                return tuple(getattr(_EMPTY, n) for n in names)
        last_row, values = self._last
        if last_row != row:
            parsed = _record_values(self._records[row])
            values = parsed if parsed is not None else [None] * len(_SLOTS)
            self._last = (row, values)
        try:
            return tuple(derive(values))
        except Exception:  # a header no parser foresaw: as if absent, never a failure
            return tuple(getattr(_EMPTY, n) for n in names)

    def _derive(self, group: str, row: int) -> None:
        derive, names = _GROUPS[group]
        got = self._derived(derive, names, row)
        size = len(self._records)
        for name, value in zip(names, got, strict=True):
            col = self._columns.get(name)
            if col is None:
                col = self._columns[name] = []
            if len(col) < size:
                col.extend([_UNSET] * (size - len(col)))
            col[row] = value

    def _derive_rows(self, group: str, rows: Sequence[int]) -> None:
        """``_derive`` of a column group at each of ``rows`` (-1: none) not derived yet
        (a group's columns are always derived together, so its first tells)."""
        derive, names = _GROUPS[group]
        size = len(self._records)
        cols = []
        for name in names:
            col = self._columns.get(name)
            if col is None:
                col = self._columns[name] = []
            if len(col) < size:
                col.extend([_UNSET] * (size - len(col)))
            cols.append(col)
        first, derived = cols[0], self._derived
        for r in rows:
            if r >= 0 and first[r] is _UNSET:
                got = derived(derive, names, r)
                first[r] = got[0]
                for col, value in zip(cols[1:], got[1:], strict=True):
                    col[r] = value

    def get(self, folder: IFolder, uids: Iterable[int]) -> Deferred[Mapping[int, Any]]:
        """Deferred firing with this table's ``fields`` once every one of ``uids`` still
        in the folder is in it (a message gone meanwhile is simply absent)."""
        return Deferred.fromCoroutine(self._get(folder, list(uids)))

    async def _get(self, folder: IFolder, uids: list[int]) -> Mapping[int, Any]:
        missing = [u for u, r in zip(uids, self.positions(uids), strict=True) if r < 0]
        if not missing:
            return self.fields
        await self._lock.acquire()
        try:
            missing = [u for u, r in zip(missing, self.positions(missing), strict=True)
                       if r < 0]
            unread = []
            for u in missing:
                cached = folder.get_cached(u, CACHE_KEY)
                if cached is None:
                    unread.append(u)
                else:
                    self._add(u, cached)  # the store's own string: held once
            bulk = IHeaderBlocks.providedBy(folder)
            size = BULK if bulk else BATCH
            batches = iter([unread[i:i + size] for i in range(0, len(unread), size)])
            running: list[Deferred[None]] = []
            failures: list[Failure] = []

            async def worker() -> None:
                try:
                    for batch in batches:
                        started = time.monotonic()
                        if bulk:
                            await self._fill_bulk(folder, batch)
                        else:
                            await self._fill(folder, batch)
                        if len(running) < PARALLEL and not failures and \
                                time.monotonic() - started > DISK_BOUND * len(batch):
                            # Waiting on the disk: one opens its files while others
                            # are read, so the disk sees more than one request.
                            running.append(Deferred.fromCoroutine(worker()))
                except Exception:
                    failures.append(Failure())

            running.append(Deferred.fromCoroutine(worker()))
            done = 0
            while done < len(running):  # a worker may start another meanwhile
                await running[done]
                done += 1
            if failures:
                failures[0].raiseException()
            if len(self.rows) > 2 * len(uids) + 1024:
                self._prune(folder)
        finally:
            self._lock.release()
        return self.fields

    async def _fill(self, folder: IFolder, uids: list[int]) -> None:
        opened: list[tuple[int, IO[bytes]]] = []
        reader = None
        first_uid = 0
        try:
            for u in uids:
                try:
                    if reader is None:
                        reader = await folder.read_message(u)
                        first_uid = u
                    else:
                        opened.append((u, await folder.open_message(u)))
                except (StoreError, FileNotFoundError):
                    continue  # expunged meanwhile: no fields, it matches nothing
            if reader is None:
                return
            results = await reader.call(_read_batch, opened, first_uid)
            opened = []  # _read_batch closed them
        finally:
            for _, f in opened:
                f.close()
            if reader is not None:
                reader.close()
        self._file(folder, results)

    async def _fill_bulk(self, folder: IFolder, uids: list[int]) -> None:
        results = await IHeaderBlocks(folder).read_headers(uids, _record_of)
        self._file(folder, [(u, text) for u, text in results if text is not None])

    def _file(self, folder: IFolder, results: list[tuple[int, str]]) -> None:
        """Keep the records read, here and in the store's cache."""
        self.files_read += len(results)
        for uid, text in results:
            self._add(uid, text)
            folder.set_cached(uid, CACHE_KEY, text)

    def _prune(self, folder: IFolder) -> None:
        """Forget messages no longer in the folder (rows renumbered, columns kept)."""
        live = set(folder_columns(folder).uids)
        keep = [(u, r) for u, r in zip(self.rows.uids, self.rows.rows, strict=True)
                if u in live]
        self.rows = _UidRows([u for u, _ in keep], range(len(keep)))
        self._records = [self._records[r] for _, r in keep]
        for name, col in self._columns.items():
            self._columns[name] = [col[r] if r < len(col) else _UNSET for _, r in keep]
        self._last = (-1, [])


class HeaderTables:
    """One ``HeaderTable`` per live folder object, shared by the factory's sessions."""

    def __init__(self) -> None:
        self._tables: weakref.WeakKeyDictionary[Any, HeaderTable] = weakref.WeakKeyDictionary()

    def table(self, folder: IFolder) -> HeaderTable:
        t = self._tables.get(folder)
        if t is None:
            t = self._tables[folder] = HeaderTable()
        return t
