"""IMAP4rev2 (RFC 9051) and UTF8=ACCEPT (RFC 6855), switched on per session by ENABLE.

The server speaks IMAP4rev1 until the client says ``ENABLE IMAP4rev2``; from then on
the behaviours RFC 9051 changes are rev2's (docs/imap.md has the list, item by item):
no ``\\Recent`` flag and no ``* n RECENT`` (SEARCH RECENT/NEW/OLD and STATUS RECENT are
BAD), no ``[UNSEEN n]`` and an untagged ``LIST`` of the mailbox in the SELECT answer,
``[CLOSED]`` when a SELECT replaces another, SEARCH answered with ``ESEARCH``, LIST with
``\\NonExistent`` for hierarchy names that are no mailbox, an untagged ``LIST ...
("OLDNAME" ...)`` after RENAME, and mailbox names in UTF-8 both ways (NFC-normalized
on the way in), as ``ENABLE UTF8=ACCEPT`` gives too. ``UTF8=ACCEPT`` alone adds
RFC 6855's own rules: SEARCH takes no CHARSET, APPEND takes ``UTF8 (~{n}...)``.

Names stay unicode in the store, which spells them in modified UTF-7 on disk, so a
folder a rev2 client creates is the same folder to a rev1 session and to Dovecot.
Everything here is gated on ``session.enabled``; without ENABLE nothing changes.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from mailhost.imap import encoding, mutf7, parser
from mailhost.imap.responses import Bad, No

if TYPE_CHECKING:
    from mailhost.imap.server import IMAPServer
    from mailhost.store.interfaces import IFolder

IMAP4REV2 = "IMAP4REV2"
UTF8_ACCEPT = "UTF8=ACCEPT"
#: How ``* ENABLED`` spells what this module switches on.
_SPELLING = {IMAP4REV2: "IMAP4rev2", UTF8_ACCEPT: UTF8_ACCEPT}
#: Search keys RFC 9051 removed with ``\\Recent``.
_RECENT_KEYS = frozenset({"RECENT", "NEW", "OLD"})
DELIM = "."


def is_rev2(s: IMAPServer) -> bool:
    """The client enabled IMAP4rev2."""
    return IMAP4REV2 in s.enabled


def utf8_names(s: IMAPServer) -> bool:
    """Mailbox names travel in UTF-8, not modified UTF-7 (RFC 9051 5.1, RFC 6855 3)."""
    return IMAP4REV2 in s.enabled or UTF8_ACCEPT in s.enabled


def enable(s: IMAPServer, names: Sequence[str]) -> list[str]:
    """ENABLE of these upper-cased names: IMAP4REV2 and UTF8=ACCEPT; returns those
    switched on, spelled as advertised, for ``* ENABLED``. Enabled while a mailbox is
    selected, rev2 applies from the next response on: the session's ``\\Recent`` view
    is dropped there and then."""
    done: list[str] = []
    for name in names:
        if name not in _SPELLING:
            continue
        s.enabled.add(name)
        if name == IMAP4REV2 and s.selected is not None:
            s.selected.rev2 = True
            s.selected.recent.clear()
        if _SPELLING[name] not in done:
            done.append(_SPELLING[name])
    return done


# -- mailbox names ----------------------------------------------------------------------

def decode_name(data: bytes, utf8: bool) -> str:
    """A mailbox name (or LIST reference/pattern) from the wire: modified UTF-7 in rev1
    (``mutf7.decode``), UTF-8 once enabled, normalized to NFC (RFC 9051 5.1: Net-Unicode)
    so that one folder has one name whatever form a client composes."""
    if not utf8:
        return mutf7.decode(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise parser.ParseError(None, "Mailbox name is not UTF-8") from None
    return unicodedata.normalize("NFC", text)


#: Code points a mailbox name must not hold (RFC 6855 3, which RFC 9051 5.1 points at
#: through Net-Unicode, RFC 5198 2): C0 and C1 controls, DEL, LINE SEPARATOR and
#: PARAGRAPH SEPARATOR. Unassigned code points and surrogates are refused too (Net-Unicode
#: text is assigned Unicode, and a surrogate is no character).
_FORBIDDEN_IN_NAMES = frozenset([*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029])


def check_new_name(name: str) -> None:
    """CREATE and RENAME: refuse a name RFC 6855 3 / RFC 9051 5.1 forbids, in rev1
    (modified UTF-7 or 8-bit) and in rev2 alike, with ``NO [CANNOT]`` naming the
    offending code point (existing folders with such names can still be used)."""
    for ch in name:
        cp = ord(ch)
        if cp in _FORBIDDEN_IN_NAMES:
            raise No(f"[CANNOT] Mailbox name contains the control character U+{cp:04X}"
                     " (RFC 9051 5.1, RFC 6855 3)")
        if cp >= 0x80 and unicodedata.category(ch) in ("Cn", "Cs"):
            raise No(f"[CANNOT] Mailbox name contains U+{cp:04X}, which is no assigned"
                     " character (RFC 9051 5.1: Net-Unicode)")


def encode_name(name: str, utf8: bool) -> bytes:
    """A store name for the wire: astring of modified UTF-7, or of UTF-8 (quoted; a
    literal only for what a quoted string cannot hold)."""
    if not utf8:
        return encoding.astring(mutf7.encode(name))
    data = name.encode("utf-8")
    if data and data.upper() != b"NIL" and all(0x21 <= c < 0x7F and c not in b'(){ %*"\\]'
                                               for c in data):
        return data
    if len(data) <= encoding.MAX_QUOTED and not any(c in (0, 0x0A, 0x0D) for c in data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return encoding.literal(data)


def renamed_line(old: str, new: str) -> bytes:
    """The untagged LIST a rev2 client hears after RENAME (RFC 9051 7.3.1, OLDNAME)."""
    return (b'* LIST () "." ' + encode_name(new, True) + b' ("OLDNAME" ('
            + encode_name(old, True) + b"))\r\n")


def denormalized(s: IMAPServer, given: bytes) -> str | None:
    """The name a rev2 client gave, if it was not in NFC (so the server normalized
    it, RFC 9051 5.1); None otherwise, and always for rev1 and INBOX."""
    if not is_rev2(s):
        return None
    raw = given.decode("utf-8", "replace")
    if raw == unicodedata.normalize("NFC", raw) or raw.upper() == "INBOX":
        return None
    return raw


def oldname_line(s: IMAPServer, given: bytes, name: str, attrs: bytes = b"") -> bytes:
    """``* LIST (attrs) "." name ("OLDNAME" (given))`` when CREATE, DELETE or APPEND
    normalized the name a rev2 client gave (RFC 9051 6.3.4, 6.3.5, 6.3.12, 6.3.9.7);
    b"" when the name was already the one the server uses."""
    raw = denormalized(s, given)
    if raw is None:
        return b""
    return (b"* LIST (" + attrs + b') "." ' + encode_name(name, True) + b' ("OLDNAME" ('
            + encode_name(raw, True) + b"))\r\n")


async def select_list(s: IMAPServer, folder: IFolder, given: bytes) -> bytes:
    """The untagged LIST of a rev2 SELECT/EXAMINE (RFC 9051 6.3.2): the mailbox's name
    as stored and its attributes ("The list of mailbox attributes MUST be accurate":
    children, special use and ``\\Subscribed``); ``OLDNAME`` when the client's
    spelling was not NFC."""
    name = folder.name
    kids = any(n.startswith(name + DELIM) for n in await s.account.list_folders())
    attrs = [b"\\HasChildren" if kids else b"\\HasNoChildren"]
    use = folder.special_use if name != "INBOX" else None
    if use:
        attrs.append(use.encode("ascii"))
    if name in await s.account.subscriptions():  # "attributes MUST be accurate"
        attrs.append(b"\\Subscribed")
    line = b"* LIST (" + b" ".join(attrs) + b') "." ' + encode_name(name, True)
    raw = denormalized(s, given)
    if raw is not None:
        line += b' ("OLDNAME" (' + encode_name(raw, True) + b"))"
    return line + b"\r\n"


def utf8_items(s: IMAPServer, items: list[parser.FetchItem]) -> list[parser.FetchItem]:
    """FETCH items, ENVELOPE marked to send UTF-8 header text in quoted strings when the
    session enabled IMAP4rev2 or UTF8=ACCEPT (RFC 9051 4.3, RFC 6855 3)."""
    if not utf8_names(s) or not any(it.name == "ENVELOPE" for it in items):
        return items
    return [replace(it, utf8=True) if it.name == "ENVELOPE" else it for it in items]


# -- commands whose grammar rev2 / UTF8=ACCEPT changes -----------------------------------

def check_search_key(s: IMAPServer, key: parser.SearchKey) -> None:
    """RFC 9051 removed the RECENT, NEW and OLD search keys with ``\\Recent``."""
    if is_rev2(s) and _uses_recent(key):
        raise Bad("IMAP4rev2 has no RECENT, NEW or OLD search keys")


def _uses_recent(key: parser.SearchKey) -> bool:
    return key.op in _RECENT_KEYS or any(
        isinstance(k, parser.SearchKey) and _uses_recent(k) for k in key.args)


def check_search_charset(s: IMAPServer, charset: str | None) -> None:
    """RFC 6855 3: once UTF8=ACCEPT is enabled, SEARCH takes no CHARSET."""
    if charset is not None and UTF8_ACCEPT in s.enabled:
        raise Bad("SEARCH CHARSET is not allowed once UTF8=ACCEPT is enabled")


def check_status_items(s: IMAPServer, items: Sequence[str]) -> None:
    """RFC 9051 has no STATUS RECENT."""
    if is_rev2(s) and "RECENT" in items:
        raise Bad("IMAP4rev2 has no STATUS RECENT")


def unwrap_append(s: IMAPServer, args: list) -> list:
    """APPEND's ``UTF8 (literal8)`` data item (RFC 6855 4) as the plain message literal
    it carries, so ``parser.parse_append`` (and MULTIAPPEND) read it as any other; BAD
    unless UTF-8 was enabled, or if the parentheses hold anything but one literal."""
    out: list = []
    i = 0
    while i < len(args):
        token = args[i]
        if (i > 0 and isinstance(token, parser.Atom) and token.upper() == "UTF8"
                and i + 1 < len(args) and isinstance(args[i + 1], list)):
            if not utf8_names(s):
                raise Bad("APPEND UTF8 needs ENABLE UTF8=ACCEPT or IMAP4rev2")
            inner = args[i + 1]
            if len(inner) != 1 or not isinstance(inner[0], parser.Literal):
                raise Bad("APPEND UTF8 expects one literal8 in parentheses")
            out.append(inner[0])
            i += 2
            continue
        out.append(token)
        i += 1
    return out
