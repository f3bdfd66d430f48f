"""FETCH ENVELOPE (RFC 3501 section 7.4.2) from the header fields the scanner kept.

Addresses are parsed with our own small RFC 5322 tokenizer because the envelope
must keep every string as sent: RFC 2047 encoded words stay encoded, 8-bit bytes
stay bytes (they go out as literals; to a session that enabled IMAP4rev2 or UTF8=ACCEPT,
valid UTF-8 goes out as a quoted string, RFC 9051 4.3 and RFC 6855 3: "IMAP4rev2
implementations MUST accept and MAY transmit [UTF-8] text in quoted-strings"; RFC 9051
7.5.2 defines ENVELOPE as the header's parsed components, so nothing is decoded: an
RFC 2047 word is sent as it stands in the header), group syntax becomes the
``(NIL NIL "group" NIL) ... (NIL NIL NIL NIL)`` markers. Malformed input never
raises; it degrades to what can be recognised, like Dovecot does
(``MISSING_MAILBOX`` / ``MISSING_DOMAIN`` where a part is absent, since a NIL host
would mean a group marker).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from mailhost.imap.encoding import MAX_QUOTED, nstring
from mailhost.imap.mime import raw

MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"
_SPECIALS = '<>@,;:.[]'
MAX_ADDRESSES = 1000


@dataclass(frozen=True)
class Address:
    """One envelope address; ``host is None`` marks a group start (``mailbox`` = name)
    or, with ``mailbox`` None too, a group end."""

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None

    def render(self, utf8: bool = False) -> bytes:
        return b"(" + b" ".join(_ns(v, utf8) for v in (self.name, self.adl, self.mailbox,
                                                         self.host)) + b")"


def _ns(value: str | None, utf8: bool = False) -> bytes:
    if value is None:
        return b"NIL"
    data = raw(value)
    if utf8 and len(data) <= MAX_QUOTED and b"\0" not in data and b"\n" not in data \
            and b"\r" not in data:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return nstring(data)  # not UTF-8: 8-bit bytes go in a literal, as to rev1
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return nstring(data)


# ------------------------------------------------------------------------ tokenizer


def _tokens(value: str) -> list[tuple[str, str]]:
    """``(kind, text)``: kind is 'atom', 'quoted', 'comment', 'domlit' or the special char."""
    out: list[tuple[str, str]] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch in " \t\r\n":
            i += 1
            out.append(("sp", " "))
        elif ch == '"':
            j = i + 1
            buf = []
            while j < n and value[j] != '"':
                if value[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(value[j])
                j += 1
            out.append(("quoted", "".join(buf)))
            i = j + 1
        elif ch == "(":
            depth = 0
            j = i
            buf = []
            while j < n:
                c = value[j]
                if c == "\\" and j + 1 < n:
                    buf.append(value[j + 1])
                    j += 2
                    continue
                if c == "(":
                    depth += 1
                    if depth > 1:
                        buf.append(c)
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        break
                    buf.append(c)
                else:
                    buf.append(c)
                j += 1
            out.append(("comment", "".join(buf)))
            i = j + 1
        elif ch == "[":
            j = value.find("]", i)
            j = n - 1 if j < 0 else j
            out.append(("domlit", value[i:j + 1]))
            i = j + 1
        elif ch in _SPECIALS:
            out.append((ch, ch))
            i += 1
        else:
            j = i
            while j < n and value[j] not in ' \t\r\n"()' and value[j] not in _SPECIALS:
                j += 1
            if j == i:  # a stray ')': a special of its own (an empty atom looped forever)
                out.append((ch, ch))
                j += 1
            else:
                out.append(("atom", value[i:j]))
            i = j
    return out


def _phrase(tokens: list[tuple[str, str]]) -> str | None:
    """A display name: its words as sent, runs of white space made one space."""
    out = ""
    for k, t in tokens:
        if k == "sp":
            if out and not out.endswith(" "):
                out += " "
        elif k in ("atom", "quoted", "."):
            out += t
    return out.strip() or None


def _addr_spec(tokens: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """(mailbox, host) of ``local@domain`` tokens (comments already removed)."""
    at = max((i for i, (k, _) in enumerate(tokens) if k == "@"), default=-1)
    local = tokens if at < 0 else tokens[:at]
    domain = [] if at < 0 else tokens[at + 1:]

    mailbox = "".join(t for _, t in local) or None
    host = "".join(t for _, t in domain) or None
    return mailbox, host


def _mailbox(tokens: list[tuple[str, str]]) -> Address | None:
    comments = [t for k, t in tokens if k == "comment"]
    words = [(k, t) for k, t in tokens if k != "comment"]
    tokens = [(k, t) for k, t in tokens if k not in ("comment", "sp")]
    if not tokens:
        return None
    lt = next((i for i, (k, _) in enumerate(tokens) if k == "<"), -1)
    adl = None
    if lt >= 0:
        gt = next((i for i, (k, _) in enumerate(tokens) if k == ">" and i > lt), len(tokens))
        name = _phrase(words[:next(i for i, (k, _) in enumerate(words) if k == "<")])
        inner = tokens[lt + 1:gt]
        colon = next((i for i, (k, _) in enumerate(inner) if k == ":"), -1)
        if colon >= 0 and inner[:1] and inner[0][0] == "@":
            adl = "".join(t for _, t in inner[:colon])
            inner = inner[colon + 1:]
        mailbox, host = _addr_spec(inner)
    else:
        name = comments[-1].strip() if comments else None
        mailbox, host = _addr_spec(tokens)
    if mailbox is None and host is None and name is None and lt < 0:
        return None
    return Address(name or None, adl, mailbox or MISSING_MAILBOX, host or MISSING_DOMAIN)


def parse_addresses(value: str) -> list[Address]:
    """An address-list header value → envelope addresses, with group markers."""
    tokens = _tokens(value)
    out: list[Address] = []
    cur: list[tuple[str, str]] = []
    in_group = False
    angle = 0
    for kind, text in tokens:
        if len(out) >= MAX_ADDRESSES:
            break
        if kind == "sp" and not cur:
            continue
        if kind == "<":
            angle += 1
        elif kind == ">" and angle:
            angle -= 1
        if angle:
            cur.append((kind, text))
            continue
        if kind == ":" and not in_group and not any(k == "<" for k, _ in cur):
            name = _phrase(cur) or ""
            out.append(Address(None, None, name, None))
            in_group = True
            cur = []
        elif kind == ";" and in_group:
            a = _mailbox(cur)
            if a is not None:
                out.append(a)
            out.append(Address(None, None, None, None))
            in_group = False
            cur = []
        elif kind == ",":
            a = _mailbox(cur)
            if a is not None:
                out.append(a)
            cur = []
        else:
            cur.append((kind, text))
    a = _mailbox(cur)
    if a is not None:
        out.append(a)
    if in_group:
        out.append(Address(None, None, None, None))
    return out


#: Address fields up to this many characters are rendered once per process and value.
_MEMO_CHARS = 1024


def render_addresses(value: str | None, utf8: bool = False) -> bytes:
    """An address list field as ENVELOPE gives it. Senders and recipients repeat from
    message to message, and a client's message list FETCHes the ENVELOPE of each one:
    parsing the field was most of an ENVELOPE's cost (issue 16), so a short field's
    rendering is kept (a pure function of its text)."""
    if value is None:
        return b"NIL"
    if len(value) <= _MEMO_CHARS:
        return _render_memo(value, utf8)
    return _render(value, utf8)


def _render(value: str, utf8: bool) -> bytes:
    addrs = parse_addresses(value)
    if not addrs:
        return b"NIL"
    return b"(" + b"".join(a.render(utf8) for a in addrs) + b")"


_render_memo = functools.lru_cache(maxsize=2048)(_render)


def render_envelope(env: dict[str, str] | None, utf8: bool = False) -> bytes:
    """The parenthesised ENVELOPE from a message-level Part's ``env`` fields; ``utf8``:
    the session takes UTF-8 in quoted strings (IMAP4rev2 or UTF8=ACCEPT enabled)."""
    env = env or {}
    from_ = render_addresses(env.get("from"), utf8)
    sender = render_addresses(env.get("sender"), utf8)
    reply_to = render_addresses(env.get("reply-to"), utf8)
    # RFC 3501: absent (or empty) Sender/Reply-To take the From value.
    if sender == b"NIL":
        sender = from_
    if reply_to == b"NIL":
        reply_to = from_
    fields = [
        _ns(env.get("date"), utf8),
        _ns(env.get("subject"), utf8),
        from_,
        sender,
        reply_to,
        render_addresses(env.get("to"), utf8),
        render_addresses(env.get("cc"), utf8),
        render_addresses(env.get("bcc"), utf8),
        _ns(env.get("in-reply-to"), utf8),
        _ns(env.get("message-id"), utf8),
    ]
    return b"(" + b" ".join(fields) + b")"
