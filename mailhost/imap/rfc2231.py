"""RFC 2231 parameter continuations and charsets, decoded for BODYSTRUCTURE.

RFC 9051 7.5.2 (and appendix E item 6): servers SHOULD decode parameter-value
continuations and character sets, so ``name*0="long"; name*1="name.bin"`` is sent as
``("name" "longname.bin")``, and ``filename*0*=utf-8''%C3%A9t; filename*1*=%C3%A9.txt``
as one ``("filename*" "utf-8''%C3%A9t%C3%A9.txt")``: the extended form stays RFC 2231
encoded (ASCII on the wire, so an IMAP4rev1 client parses it as before), in UTF-8
whatever charset the message used. A lone ``title*=iso-8859-1''%E9`` becomes
``utf-8''%C3%A9`` the same way.

What cannot be decoded is sent as the message has it, as Dovecot does: segments with a
gap in their numbers, a name given both plain and in segments, an unknown charset, a
broken ``%`` escape. Applied when BODYSTRUCTURE is written, not when the MIME tree is
scanned, so structures already in a folder's cache come out decoded too.
"""

from __future__ import annotations

import re

_INDEXED = re.compile(r"^(.+?)\*(\d{1,4})(\*?)$")
_HEX = re.compile(rb"%([0-9A-Fa-f]{2})")
_ESCAPES = re.compile(rb"(?:[^%]|%[0-9A-Fa-f]{2})*")
#: RFC 2231 attribute-char: what an extended value may hold unescaped.
_SAFE = frozenset(b"!#$&+-.^_`{|}~0123456789"
                  b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def merge(params: list[list[str]]) -> list[list[str]]:
    """``[[name, value], ...]`` with RFC 2231 segments joined and extended values in
    UTF-8; each merged parameter takes the place of its first segment."""
    if not any("*" in name for name, _ in params):
        return params  # the usual case, on every BODYSTRUCTURE: nothing to do
    groups: dict[str, list[tuple[int, bool, str, int]]] = {}
    plain: set[str] = set()
    for pos, (name, value) in enumerate(params):
        m = _INDEXED.match(name)
        if m:
            groups.setdefault(m.group(1).lower(), []).append(
                (int(m.group(2)), bool(m.group(3)), value, pos))
        else:
            plain.add(name.rstrip("*").lower())
    replace: dict[int, list[str] | None] = {}
    for base, segs in groups.items():
        segs.sort()
        if base in plain or [s[0] for s in segs] != list(range(len(segs))):
            continue  # not a continuation after all: leave every piece alone
        merged = _join(params[segs[0][3]][0].split("*", 1)[0], segs)
        if merged is None:
            continue
        first = min(s[3] for s in segs)
        for s in segs:
            replace[s[3]] = merged if s[3] == first else None
    out: list[list[str]] = []
    for pos, (name, value) in enumerate(params):
        if pos in replace:
            done = replace[pos]
            if done is not None:
                out.append(done)
        elif name.endswith("*") and not _INDEXED.match(name):
            out.append([name, _to_utf8(value) or value])
        else:
            out.append([name, value])
    return out


def _join(base: str, segs: list[tuple[int, bool, str, int]]) -> list[str] | None:
    if not any(extended for _, extended, _, _ in segs):
        return [base, "".join(value for _, _, value, _ in segs)]
    charset, lang, data = "us-ascii", "", b""
    for index, extended, value, _ in segs:
        if extended:
            if index == 0:
                parts = value.split("'", 2)
                if len(parts) != 3:
                    return None
                charset, lang, value = parts[0] or "us-ascii", parts[1], parts[2]
            piece = _unpercent(value)
            if piece is None:
                return None
            data += piece
        else:
            data += value.encode("utf-8", "surrogateescape")
    text = _decode(data, charset)
    return None if text is None else [base + "*", _encode(text, lang)]


def _to_utf8(value: str) -> str | None:
    """A lone extended value (``name*=charset'lang'%xx``) re-encoded in UTF-8."""
    parts = value.split("'", 2)
    if len(parts) != 3:
        return None
    data = _unpercent(parts[2])
    text = None if data is None else _decode(data, parts[0] or "us-ascii")
    return None if text is None else _encode(text, parts[1])


def decode_extended(value: str) -> str | None:
    """The text an extended value (``charset'lang'%xx...``) stands for."""
    parts = value.split("'", 2)
    if len(parts) != 3:
        return None
    data = _unpercent(parts[2])
    return None if data is None else _decode(data, parts[0] or "us-ascii")


def _unpercent(value: str) -> bytes | None:
    raw = value.encode("utf-8", "surrogateescape")
    if b"%" in raw and not _ESCAPES.fullmatch(raw):
        return None
    return _HEX.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


def _decode(data: bytes, charset: str) -> str | None:
    try:
        return data.decode(charset)
    except (LookupError, UnicodeDecodeError):
        return None


def _encode(text: str, lang: str) -> str:
    data = text.encode("utf-8")
    return "utf-8'" + lang + "'" + "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in data)
