"""Rendering one message's FETCH response items (RFC 3501 section 6.4.5 / 7.4.2).

``fetch_message`` returns the pieces that go between ``* n FETCH (`` and ``)``:
``bytes`` for small items and ``BodyRange`` for body byte ranges, which the protocol
streams as a literal from the store's message reader (a small range is read at once
where the reader is made, without a thread hop: ``mailhost.store.reader``). The MIME
structure comes from the folder's cache (``get_cached(uid, "mime")``) when it is
there, so a second ENVELOPE/BODYSTRUCTURE fetch opens no file; FLAGS, UID,
RFC822.SIZE and INTERNALDATE come from the index alone. Every read and scan goes
through the folder's ``IMessageReader`` (``read_message``), which runs it off the
reactor thread. Body literals carry 0x80 for each NUL (``output.without_nul``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mailhost.imap import binary, bodystructure, envelope, mime, objects
from mailhost.imap.encoding import format_datetime, format_flags, nstring
from mailhost.imap.output import without_nul
from mailhost.imap.parser import FetchItem, Section
from mailhost.imap.preview import make_preview, read_part, text_part
from mailhost.imap.responses import No
from mailhost.store.interfaces import IFolder, MessageInfo
from mailhost.store.reader import skip_to

log = Logger()

#: BINARY sections up to this size are decoded and sent inline; larger ones stream.
INLINE_MAX = 64 * 1024
READ_CHUNK = 64 * 1024

_STRUCTURE_ITEMS = {"ENVELOPE", "BODY", "BODYSTRUCTURE", "RFC822.HEADER", "RFC822.TEXT"}
_SECTION_FOR = {
    "RFC822": Section(),
    "RFC822.HEADER": Section((), "HEADER"),
    "RFC822.TEXT": Section((), "TEXT"),
}


def needs_seen(items: Sequence[FetchItem]) -> bool:
    """True if fetching ``items`` sets ``\\Seen`` (non-PEEK BODY[...] and BINARY[...],
    RFC822, RFC822.TEXT)."""
    return any(
        (i.name in ("BODY", "BINARY") and i.section is not None)
        or i.name in ("RFC822", "RFC822.TEXT")
        for i in items
    )


class BodyRange:
    """``length`` octets of a message from ``offset``, for the protocol to stream.

    ``open()`` fires with an ``IMessageReader`` of that range; the caller reads it
    to the end (or ``length`` octets) and closes it.
    """

    def __init__(self, folder: IFolder, uid: int, offset: int, length: int) -> None:
        self.folder = folder
        self.uid = uid
        self.offset = offset
        self.length = length

    #: NULs go out as 0x80: a plain literal may not carry them.
    keep_nul = False

    @property
    def prefix(self) -> bytes:
        return b"{%d}\r\n" % self.length

    def open(self) -> Deferred:
        return self.folder.read_message(self.uid, self.offset, self.length)

    def __repr__(self) -> str:
        return f"BodyRange(uid={self.uid}, offset={self.offset}, length={self.length})"


class BinaryRange:
    """A BINARY section too large to hold: ``length`` decoded octets after ``skip``, of
    the encoded bytes ``start``..``end``; a literal8 (``~{n}``) when it holds a NUL."""

    def __init__(self, folder: IFolder, uid: int, start: int, end: int, encoding: str,
                 skip: int, length: int, literal8: bool) -> None:
        self.folder, self.uid, self.start, self.end = folder, uid, start, end
        self.encoding, self.skip, self.length = encoding, skip, length
        self.keep_nul = literal8

    @property
    def prefix(self) -> bytes:
        return (b"~{%d}\r\n" if self.keep_nul else b"{%d}\r\n") % self.length

    def open(self) -> Deferred:
        d = self.folder.read_message(self.uid, self.start, self.end - self.start)
        return d.addCallback(binary.DecodedReader, self.encoding, self.skip)


def _skip_to(f: BinaryIO, offset: int) -> None:
    skip_to(f, offset, READ_CHUNK)


# ------------------------------------------------------------------------- planning


@dataclass
class _Spec:
    """What one body item resolves to: a byte range, filtered header fields, or NIL."""

    kind: str  # "range", "fields", "nil"
    start: int = 0
    end: int = 0
    names: frozenset[str] = frozenset()
    negate: bool = False
    partial: tuple[int, int] | None = None
    data: bytes | None = None

    def inline(self) -> bool:
        """Read in the pool with the other parsed items (header fields); a byte range,
        however small, streams as a ``BodyRange``: its reader reads a small range at
        once, which cost less than the thread hop a ``reader.call`` takes per message
        (``UID FETCH 1:* BODY.PEEK[]`` of 50 KiB messages: the hop was a third of the
        server's CPU, bench/imap_fetch.py)."""
        return self.kind == "fields"


def _needs_structure(item: FetchItem) -> bool:
    s = item.section
    if s is None:
        return item.name in _STRUCTURE_ITEMS
    # BODY[...] is named "BODY" like the BODY structure item: only its section decides
    # (BODY[] without PEEK loaded, or scanned, the MIME structure of every message).
    return bool(s.part) or s.text is not None


def _plan(section: Section, partial: tuple[int, int] | None, struct: mime.Part | None,
          size: int) -> _Spec:
    if struct is None:  # only BODY[] gets here without a structure
        start, end = 0, size
        return _clip(_Spec("range", start, end), partial)
    node = struct.find(section.part) if section.part else struct
    if node is None:
        return _Spec("range", 0, 0)  # a part that does not exist is empty (as in Dovecot)
    text = section.text
    if section.part and text in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"):
        # These name the header/text of an embedded message (a message/rfc822 part).
        inner = node.message
        if inner is None:
            return _Spec("range", 0, 0)
        node = inner
    if text is None:
        if section.part:
            start, end = node.body_start, node.body_end
        else:
            start, end = 0, size
    elif text == "TEXT":
        start, end = node.body_start, node.body_end
    else:  # HEADER, HEADER.FIELDS[.NOT], MIME
        start, end = node.header_start, node.body_start
    start, end = max(0, min(start, size)), max(0, min(end, size))
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return _Spec("fields", start, end, frozenset(n.lower() for n in section.fields),
                     text == "HEADER.FIELDS.NOT", partial)
    return _clip(_Spec("range", start, max(start, end)), partial)


def _clip(spec: _Spec, partial: tuple[int, int] | None) -> _Spec:
    if partial is not None:
        first, count = partial
        spec.start = min(spec.start + first, spec.end)
        spec.end = min(spec.end, spec.start + count)
    return spec


# --------------------------------------------------------------------- file reading


def _iter_lines(f: BinaryIO, start: int, end: int):
    """Lines (with their newline) of ``[start, end)``, read in bounded chunks."""
    _skip_to(f, start)
    left = end - start
    pending = b""
    while left > 0:
        chunk = f.read(min(left, READ_CHUNK))
        if not chunk:
            break
        left -= len(chunk)
        data = pending + chunk
        lines = data.split(b"\n")
        pending = lines.pop()
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending


def _header_fields(f: BinaryIO, spec: _Spec) -> bytes:
    """The header fields of ``[start, end)`` named (or, negated, not named) in ``spec``,
    with their original lines, order and duplicates, plus the closing blank line."""
    out = bytearray()
    keep = False
    for line in _iter_lines(f, spec.start, spec.end):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if keep:
                out += line
            continue
        name, colon, _ = line.partition(b":")
        if colon:
            matched = name.strip().decode("ascii", "replace").lower() in spec.names
            keep = matched != spec.negate
        else:
            keep = spec.negate
        if keep:
            out += line
    if out and not out.endswith(b"\n"):
        out += b"\r\n"
    out += b"\r\n"
    return bytes(out)


def _scan(f: BinaryIO) -> mime.Part:
    return mime.scan_file(f)


def _read_specs(f: BinaryIO, specs: list[_Spec]) -> None:
    for spec in specs:
        if spec.kind == "fields":
            data = _header_fields(f, spec)
            if spec.partial is not None:
                first, count = spec.partial
                data = data[first:first + count]
            spec.data = data


# ------------------------------------------------------------------------ rendering


def _literal(data: bytes) -> bytes:
    if not data:
        return b'""'
    return b"{%d}\r\n" % len(data) + without_nul(data)


async def _fetch(folder: Any, info: MessageInfo, items: Sequence[FetchItem]) -> list:
    struct: mime.Part | None = None
    preview_of: str | None = None
    wants_preview = [i for i in items if i.name == "PREVIEW"]
    if wants_preview:
        preview_of = folder.get_cached(info.uid, "preview")
        if preview_of is None and all(i.lazy for i in wants_preview):
            _make_preview_later(folder, info)
    saved = None  # RFC 8514
    if any(i.name == "SAVEDATE" for i in items):
        saved = await folder.save_dates([info.uid])
    binaries = {n: i for n, i in enumerate(items) if i.name.startswith("BINARY")}
    binary_out: dict[int, Any] = {}
    need_structure = bool(binaries) or any(_needs_structure(i) for i in items) or (
        wants_preview and preview_of is None and not all(i.lazy for i in wants_preview))
    if need_structure:
        cached = folder.get_cached(info.uid, "mime")
        struct = mime.loads(cached) if cached else None
    reader = None
    try:
        if struct is None and need_structure:
            reader = await folder.read_message(info.uid)
            struct = await reader.call(_scan)
            folder.set_cached(info.uid, "mime", mime.dumps(struct))
        specs: dict[int, _Spec] = {}
        for n, item in enumerate(items):
            section = item.section if item.section is not None else _SECTION_FOR.get(item.name)
            if section is not None and (item.section is not None or item.name in _SECTION_FOR) \
                    and n not in binaries:
                specs[n] = _plan(section, item.partial, struct, info.size)
        wanted = [s for s in specs.values() if s.inline()]
        if wanted:
            if reader is None:
                reader = await folder.read_message(info.uid)
            await reader.call(_read_specs, wanted)
        if binaries:
            assert struct is not None
            if reader is None:
                reader = await folder.read_message(info.uid)
            for n, item in binaries.items():
                binary_out[n] = await _binary(folder, info, item, struct, reader)
        if need_structure and wants_preview and preview_of is None:
            assert struct is not None
            if reader is None:
                reader = await folder.read_message(info.uid)
            preview_of = await _preview(folder, info, struct, reader)
    finally:
        if reader is not None:
            reader.close()

    pieces: list = []
    buf = bytearray()
    for n, item in enumerate(items):
        if n:
            buf += b" "
        buf += item.response_name.encode("ascii") + b" "
        spec = specs.get(n)
        if spec is not None:
            if spec.kind == "nil":
                buf += b"NIL"
            elif spec.data is not None:
                buf += _literal(spec.data)
            elif spec.end <= spec.start:
                buf += b'""'
            else:
                pieces.append(bytes(buf))
                buf = bytearray()
                pieces.append(BodyRange(folder, info.uid, spec.start, spec.end - spec.start))
            continue
        if item.name == "PREVIEW":
            buf += nstring(preview_of)
            continue
        if item.name in ("SAVEDATE", "EMAILID", "THREADID"):
            buf += objects.fetch_value(item.name, folder, info, saved)
            continue
        if n in binary_out:
            got = binary_out[n]
            if isinstance(got, BinaryRange):
                pieces.append(bytes(buf))
                buf = bytearray()
                pieces.append(got)
            else:
                buf += got
            continue
        buf += _simple(item, info, struct)
    if buf:
        pieces.append(bytes(buf))
    return pieces


def _simple(item: FetchItem, info: MessageInfo, struct: mime.Part | None) -> bytes:
    name = item.name
    if name == "UID":
        return b"%d" % info.uid
    if name == "FLAGS":
        flags = set(info.flags)
        if info.recent:
            flags.add("\\Recent")
        return format_flags(flags)
    if name == "INTERNALDATE":
        return format_datetime(info.internal_date)
    if name == "RFC822.SIZE":
        return b"%d" % info.size
    assert struct is not None
    if name == "ENVELOPE":
        return envelope.render_envelope(struct.env, item.utf8)
    if name == "BODYSTRUCTURE":
        return bodystructure.render(struct, extended=True)
    if name == "BODY":
        return bodystructure.render(struct, extended=False)
    raise ValueError(f"unknown FETCH item {name}")


async def _binary(folder: Any, info: MessageInfo, item: FetchItem, struct: mime.Part,
                  reader: Any) -> bytes | BinaryRange:
    """One BINARY[...], BINARY.PEEK[...] or BINARY.SIZE[...] (RFC 3516): inline bytes,
    or a range to stream decoded."""
    assert item.section is not None
    path = item.section.part
    node = struct.find(path) if path else struct
    if node is None:
        return b"0" if item.name == "BINARY.SIZE" else b'""'
    try:
        encoding = binary.encoding_of(node) if path else "7BIT"
    except binary.UnknownEncoding as e:
        raise No(f"[UNKNOWN-CTE] Cannot decode the transfer encoding {e}") from None
    start, end = (node.body_start, node.body_end) if path else (0, info.size)
    key = "binary:" + ".".join(map(str, path))
    cached = folder.get_cached(info.uid, key)
    if cached:
        size_s, nul_s = cached.split()
        size, nul = int(size_s), nul_s == "1"
    else:
        size, nul = await reader.call(binary.measure, start, end, encoding)
        folder.set_cached(info.uid, key, f"{size} {int(nul)}")
    if item.name == "BINARY.SIZE":
        return b"%d" % size
    first, count = item.partial if item.partial is not None else (0, size)
    first = min(first, size)
    length = max(0, min(count, size - first))
    if end - start <= INLINE_MAX:
        data = (await reader.call(binary.decode_all, start, end, encoding))[first:first + length]
        if not data:
            return b'""'
        return (b"~{%d}\r\n" if b"\0" in data else b"{%d}\r\n") % len(data) + data
    if length == 0:
        return b'""'
    return BinaryRange(folder, info.uid, start, end, encoding, first, length, nul)


async def _preview(folder: Any, info: MessageInfo, struct: mime.Part, reader: Any) -> str:
    """RFC 8970's preview of the message, made once and kept in the folder's cache."""
    part = text_part(struct)
    text = make_preview(await reader.call(read_part, part), part) if part is not None else ""
    folder.set_cached(info.uid, "preview", text)
    return text


def _make_preview_later(folder: Any, info: MessageInfo) -> None:
    """``PREVIEW (LAZY)`` answered NIL: make the preview now, for the next FETCH."""
    d = Deferred.fromCoroutine(_fetch(folder, info, [FetchItem("PREVIEW")]))
    d.addErrback(lambda f: log.failure("making the preview of UID {uid} failed", f,
                                       uid=info.uid))


def fetch_message(folder: Any, info: MessageInfo, items: Sequence[FetchItem]) -> Deferred:
    """Deferred firing with the pieces of ``info``'s FETCH response for ``items``.

    Pieces are ``bytes`` (already separated by spaces) and ``BodyRange`` (to send as
    ``{length}\\r\\n`` + that many octets). ``\\Recent`` is included in FLAGS when
    ``info.recent`` is set, so the caller passes the session's view of it.
    """
    return Deferred.fromCoroutine(_fetch(folder, info, items))


def structure(folder: Any, info: MessageInfo) -> Deferred:
    """Deferred firing with the message's ``mime.Part`` tree (cached after the first scan)."""

    async def run() -> mime.Part:
        cached = folder.get_cached(info.uid, "mime")
        part = mime.loads(cached) if cached else None
        if part is not None:
            return part
        reader = await folder.read_message(info.uid)
        try:
            part = await reader.call(_scan)
        finally:
            reader.close()
        folder.set_cached(info.uid, "mime", mime.dumps(part))
        return part

    return Deferred.fromCoroutine(run())


async def _section_bytes(folder: Any, info: MessageInfo, section: Section,
                         partial: tuple[int, int] | None) -> tuple[int, int] | bytes:
    struct = None
    if section != Section():
        cached = folder.get_cached(info.uid, "mime")
        struct = mime.loads(cached) if cached else None
        if struct is None:
            reader = await folder.read_message(info.uid)
            try:
                struct = await reader.call(_scan)
            finally:
                reader.close()
            folder.set_cached(info.uid, "mime", mime.dumps(struct))
    spec = _plan(section, partial, struct, info.size)
    if spec.kind == "nil":
        return b""
    if spec.kind == "range":
        return spec.start, max(spec.start, spec.end)
    reader = await folder.read_message(info.uid)
    try:
        await reader.call(_read_specs, [spec])
    finally:
        reader.close()
    return spec.data or b""


def section_bytes(folder: Any, info: MessageInfo, section: Section,
                  partial: tuple[int, int] | None = None) -> Deferred:
    """Deferred firing with what ``BODY.PEEK[section]<partial>`` would send: a
    ``(start, end)`` byte range of the message (read it with ``read_message``, so a big
    part streams), or the bytes themselves when they are no range (HEADER.FIELDS). For
    CATENATE and URLFETCH (mailhost.imap.catenate, mailhost.imap.urlauth)."""
    return Deferred.fromCoroutine(_section_bytes(folder, info, section, partial))
