"""FETCH BODY and BODYSTRUCTURE (RFC 3501 section 7.4.2) from a scanned ``Part`` tree.

Types and subtypes are upper-cased (as Dovecot does); parameter names and values,
dispositions and the other fields are sent as they appear in the message, but for
RFC 2231 parameter continuations and charsets, which are decoded (``rfc2231``). A part
without Content-Type gets the RFC 2045 default ``TEXT/PLAIN; CHARSET=US-ASCII``
(``MESSAGE/RFC822`` inside multipart/digest). ``BODY`` is the non-extensible form,
``BODYSTRUCTURE`` adds the extension data.
"""

from __future__ import annotations

from mailhost.imap import rfc2231
from mailhost.imap.encoding import nstring, string
from mailhost.imap.envelope import render_envelope
from mailhost.imap.mime import Part, raw


def _s(value: str) -> bytes:
    return string(raw(value))


def _ns(value: str | None) -> bytes:
    return nstring(None if value is None else raw(value))


def _params(params: list[list[str]] | None) -> bytes:
    if not params:
        return b"NIL"
    # RFC 2231 continuations and charsets decoded (RFC 9051 7.5.2; rfc2231.py).
    return b"(" + b" ".join(_s(k) + b" " + _s(v) for k, v in rfc2231.merge(params)) + b")"


def _disposition(disp: list | None) -> bytes:
    if not disp:
        return b"NIL"
    value, params = disp
    return b"(" + _s(value) + b" " + _params(params) + b")"


def _language(langs: list[str] | None) -> bytes:
    if not langs:
        return b"NIL"
    return b"(" + b" ".join(_s(x) for x in langs) + b")"


def _empty_message(at: int) -> Part:
    """Stand-in for an embedded message that cannot be parsed (e.g. base64-encoded)."""
    p = Part(at, message_level=True)
    return p


def render(part: Part, extended: bool) -> bytes:
    """BODYSTRUCTURE (``extended``) or BODY of ``part``."""
    if part.type == "MULTIPART" and part.children:
        out = b"(" + b"".join(render(c, extended) for c in part.children)
        out += b" " + _s(part.subtype)
        if extended:
            out += b" " + b" ".join((
                _params(part.params), _disposition(part.disposition),
                _language(part.language), _ns(part.location),
            ))
        return out + b")"
    fields = [
        _s(part.type), _s(part.subtype), _params(part.params), _ns(part.id),
        _ns(part.description), _s(part.encoding or "7BIT"), b"%d" % part.size,
    ]
    if (part.type, part.subtype) == ("MESSAGE", "RFC822"):
        inner = part.message if part.message is not None else _empty_message(part.body_end)
        fields += [render_envelope(inner.env), render(inner, extended), b"%d" % part.lines]
    elif part.type == "TEXT":
        fields.append(b"%d" % part.lines)
    if extended:
        fields += [_ns(part.md5), _disposition(part.disposition), _language(part.language),
                   _ns(part.location)]
    return b"(" + b" ".join(fields) + b")"
