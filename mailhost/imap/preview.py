"""PREVIEW (RFC 8970): the first words of a message's text, for a list view.

Taken from the first text/plain part that is not an attachment (else the first
text/html one, its tags dropped), decoded (transfer encoding, charset), quoted lines
and the signature left out, whitespace collapsed, cut at ``MAX_CHARS``. Only the first
``READ_MAX`` octets of that part are ever read, so a preview costs the same for a
100 MB message as for a small one.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import quopri
import re
from html.parser import HTMLParser
from typing import BinaryIO

from mailhost.imap.mime import Part

#: RFC 8970 3: at most 256 characters; 200 as the RFC's examples and Dovecot.
MAX_CHARS = 200
#: Octets of the chosen part that are read at most.
READ_MAX = 16 * 1024
_SPACE = re.compile(r"\s+")


def text_part(part: Part) -> Part | None:
    """The part a preview is made from, or None (no text at all)."""
    plain, html = _first(part, "PLAIN"), _first(part, "HTML")
    return plain or html


def _first(part: Part, subtype: str) -> Part | None:
    if part.disposition and str(part.disposition[0]).upper() == "ATTACHMENT":
        return None
    if part.children:
        for child in part.children:
            found = _first(child, subtype)
            if found is not None:
                return found
        return None
    if part.type == "TEXT" and part.subtype == subtype:
        return part
    return None


def _param(part: Part, name: str) -> str | None:
    for key, value in part.params:
        if key.upper() == name:
            return value
    return None


def read_part(f: BinaryIO, part: Part) -> bytes:
    """At most ``READ_MAX`` octets of the part's body (thread side)."""
    f.seek(part.body_start)
    return f.read(min(part.size, READ_MAX))


def make_preview(body: bytes, part: Part) -> str:
    """The preview text of ``body`` (the part's first octets, still encoded)."""
    encoding = (part.encoding or "7BIT").upper()
    if encoding == "BASE64":
        cut = len(body.replace(b"\r\n", b"")) // 4 * 4  # whole quanta of a cut read
        try:
            body = base64.b64decode(body.replace(b"\r\n", b"")[:cut], validate=False)
        except (binascii.Error, ValueError):
            body = b""
    elif encoding == "QUOTED-PRINTABLE":
        body = quopri.decodestring(body)
    charset = _param(part, "CHARSET") or "us-ascii"
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    text = body.decode(charset, "replace")
    if part.subtype == "HTML":
        text = _html_text(text)
    lines = []
    for line in text.splitlines():
        if line.rstrip() == "--":  # the signature separator ("-- ")
            break
        if line.lstrip().startswith(">"):
            continue
        lines.append(line)
    text = _SPACE.sub(" ", " ".join(lines)).strip()
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS].rstrip()
    return text


class _TextOf(HTMLParser):
    """The text of an HTML fragment, without script, style and head."""

    _SKIP = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in ("br", "p", "div", "li", "tr"):
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.out.append(data)


def _html_text(html: str) -> str:
    parser = _TextOf()
    parser.feed(html)
    parser.close()
    return "".join(parser.out)
