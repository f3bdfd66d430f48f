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

Messages not yet known are read in batches of ``BATCH``: the files of a batch are opened
(``IFolder.open_message``; on Maildir a dentry lookup, which the store itself does on
the reactor thread) and one ``IMessageReader.call`` runs the header reading and parsing
of the whole batch in the store's thread pool, so 100k messages cost 100k/BATCH thread
hops, not 100k, and the reactor only files the results between batches.
"""

from __future__ import annotations

import calendar
import datetime
import email.utils
import json
import re
import sys
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any, NamedTuple

from twisted.internet.defer import Deferred, DeferredLock, FirstError, gatherResults

from mailhost.imap import envelope
from mailhost.imap.basesubject import base_subject
from mailhost.imap.casemap import casemap
from mailhost.imap.search import _address_text, _decode_header_value
from mailhost.imap.selected import folder_columns
from mailhost.store.interfaces import IFolder, StoreError

#: The key under which a message's fields live in the store's per-message cache.
CACHE_KEY = "sortf1"
#: Messages whose headers one thread job reads (and whose files are open at once).
BATCH = 64
#: Batches in flight at once (so at most BATCH * PARALLEL files open per fill).
PARALLEL = 3
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


def _fields_of(block: bytes) -> Iterator[tuple[str, bytes]]:
    """(lower-case name, unfolded value) of each field of a header block: what
    ``search._header_fields`` yields, with one regex doing the unfolding."""
    for line in _FOLD.sub(b"", block).split(b"\n"):
        name, colon, value = line.partition(b":")
        if colon and name:
            yield name.strip().decode("ascii", "replace").lower(), value.strip()


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


def parse_fields(block: bytes) -> Fields:
    """``Fields`` of a header block (pure; runs in a worker thread)."""
    first: dict[str, bytes] = {}
    subjects: list[str] = []
    for name, value in _fields_of(block):
        if name not in _WANTED:
            continue
        if name == "subject":
            subjects.append(_decode_header_value(value))
        first.setdefault(name, value)
    raw_date = first.get("date")
    date, day = _sent(raw_date) if raw_date is not None else (None, None)
    base, reply = base_subject(subjects[0] if subjects else "")

    def addresses(name: str) -> tuple[str | None, str, str]:
        value = first.get(name)
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
        return casemap(search_text), casemap(mailbox), casemap(display)

    from_text, from_mailbox, from_display = addresses("from")
    to_text, to_mailbox, to_display = addresses("to")
    cc_text, cc_mailbox, _ = addresses("cc")
    mid_raw = first.get("message-id")
    mid = None
    if mid_raw is not None:
        m = _MSGID.search(mid_raw.decode("utf-8", "replace"))
        mid = m.group(1) if m is not None else None
    parents: tuple[str, ...] = ()
    refs = first.get("references")
    if refs is not None:
        parents = tuple(_MSGID.findall(refs.decode("utf-8", "replace")))
    if not parents and first.get("in-reply-to") is not None:
        ids = _MSGID.findall(first["in-reply-to"].decode("utf-8", "replace"))
        parents = tuple(ids[:1])
    return _shared(Fields(date, day, casemap("\n".join(subjects)) if subjects else None,
                          casemap(base), reply, from_text, from_mailbox, from_display,
                          to_text, to_mailbox, to_display, cc_text, cc_mailbox, mid, parents))


def _shared(f: Fields) -> Fields:
    """``f`` with its strings interned: a folder repeats the same few To/From
    addresses, base subjects and message-ids (a reply's parent is another message's
    id) thousands of times, and 100k messages must fit the memory budget."""
    i = sys.intern
    return Fields(f.date, f.day, None if f.subject is None else i(f.subject), i(f.base), f.reply,
                  None if f.from_text is None else i(f.from_text), i(f.from_mailbox),
                  i(f.from_display), None if f.to_text is None else i(f.to_text),
                  i(f.to_mailbox), i(f.to_display),
                  None if f.cc_text is None else i(f.cc_text), i(f.cc_mailbox),
                  None if f.message_id is None else i(f.message_id),
                  tuple(i(p) for p in f.parents))


def _dumps(f: Fields) -> str:
    return json.dumps(list(f), ensure_ascii=False, separators=(",", ":"))


def _loads(text: str) -> Fields | None:
    try:
        v = json.loads(text)
        v[14] = tuple(v[14])
        return _shared(Fields(*v))
    except (ValueError, TypeError, IndexError):
        return None


def _read_batch(first: IO[bytes], rest: Sequence[tuple[int, IO[bytes]]],
                first_uid: int) -> list[tuple[int, Fields, str]]:
    """Run in a thread: (uid, fields, cache text) of each opened message."""
    out = []
    for uid, f in ((first_uid, first), *rest):
        try:
            if f is not first:
                f.seek(0)
            fields = parse_fields(_head(f))
        except OSError:
            continue
        finally:
            if f is not first:
                f.close()
        out.append((uid, fields, _dumps(fields)))
    return out


class HeaderTable:
    """The ``Fields`` of one folder's messages, by UID, filled on demand."""

    def __init__(self) -> None:
        self.fields: dict[int, Fields] = {}
        self._lock = DeferredLock()
        #: Messages read from their files (not the cache): for tests and the bench.
        self.files_read = 0
        #: THREAD's last answer per algorithm: ((algorithm, UIDs), its ``* THREAD`` data
        #: by UID), kept as bytes: a tree of 100k nodes would cost tens of MB.
        self.threads: dict[str, tuple[Any, bytes]] = {}

    def get(self, folder: IFolder, uids: Iterable[int]) -> Deferred[dict[int, Fields]]:
        """Deferred firing with this table's ``fields`` once every one of ``uids`` still
        in the folder is in it (a message gone meanwhile is simply absent)."""
        return Deferred.fromCoroutine(self._get(folder, list(uids)))

    async def _get(self, folder: IFolder, uids: list[int]) -> dict[int, Fields]:
        known = self.fields
        missing = [u for u in uids if u not in known]
        if not missing:
            return known
        await self._lock.acquire()
        try:
            missing = [u for u in missing if u not in known]
            unread = []
            for u in missing:
                cached = folder.get_cached(u, CACHE_KEY)
                f = _loads(cached) if cached is not None else None
                if f is None:
                    unread.append(u)
                else:
                    known[u] = f
            batches = iter([unread[i:i + BATCH] for i in range(0, len(unread), BATCH)])

            async def worker() -> None:
                for batch in batches:
                    await self._fill(folder, batch)

            # A few batches in flight: one opens its files while others are read, so
            # the disk sees more than one request at a time on a cold cache.
            try:
                await gatherResults([Deferred.fromCoroutine(worker())
                                     for _ in range(PARALLEL)], consumeErrors=True)
            except FirstError as e:
                e.subFailure.raiseException()
            if len(known) > 2 * len(uids) + 1024:
                self._prune(folder)
        finally:
            self._lock.release()
        return known

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
        self.files_read += len(results)
        for uid, fields, text in results:
            self.fields[uid] = fields
            folder.set_cached(uid, CACHE_KEY, text)

    def _prune(self, folder: IFolder) -> None:
        live = set(folder_columns(folder).uids)
        for u in [u for u in self.fields if u not in live]:
            del self.fields[u]


class HeaderTables:
    """One ``HeaderTable`` per live folder object, shared by the factory's sessions."""

    def __init__(self) -> None:
        self._tables: weakref.WeakKeyDictionary[Any, HeaderTable] = weakref.WeakKeyDictionary()

    def table(self, folder: IFolder) -> HeaderTable:
        t = self._tables.get(folder)
        if t is None:
            t = self._tables[folder] = HeaderTable()
        return t
