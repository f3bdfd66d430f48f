"""The message view's MIME reading: headers, the text and HTML bodies, attachments.

The mail view hands over a message's bytes; this parses them with the stdlib
``email`` package (``policy.default``). Parsing is CPU work proportional to the size,
so a message above ``INLINE_LIMIT`` is parsed in the reactor's thread pool, never on
the reactor thread. Every leaf part that is not the chosen text or HTML body counts
as an attachment (inline images too), numbered in document order; a forwarded
message (``message/rfc822``) is one attachment, not descended into.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from email.message import EmailMessage, Message
from typing import Any

from twisted.internet import defer, threads

#: Messages up to this size are parsed on the reactor thread (well under a millisecond).
INLINE_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Attachment:
    """One attachment of a message, without its bytes."""

    index: int
    filename: str | None
    content_type: str
    size: int
    content_id: str | None
    inline: bool


@dataclass(frozen=True)
class ParsedMessage:
    """What the message view shows: header fields in order, bodies and attachments."""

    headers: tuple[tuple[str, str], ...]
    text: str | None
    html: str | None
    attachments: tuple[Attachment, ...]
    payloads: tuple[bytes, ...]  #: the decoded bytes of each attachment, by index


def parse(raw: bytes) -> ParsedMessage:
    """Parse a whole message (any size; see ``parse_later`` for the reactor)."""
    msg: Any = email.message_from_bytes(raw, policy=email.policy.default)
    headers = tuple((name, _header_text(msg, name, value)) for name, value in msg.raw_items())
    text_part = _body(msg, "plain")
    html_part = _body(msg, "html")
    attachments: list[Attachment] = []
    payloads: list[bytes] = []
    for part in _leaves(msg):
        if part is text_part or part is html_part:
            continue
        data = _payload(part)
        filename = _filename(part)
        attachments.append(Attachment(
            index=len(attachments),
            filename=filename,
            content_type=part.get_content_type(),
            size=len(data),
            content_id=_content_id(part),
            inline=part.get_content_disposition() != "attachment",
        ))
        payloads.append(data)
    return ParsedMessage(headers, _text(text_part), _text(html_part), tuple(attachments),
                         tuple(payloads))


def parse_later(raw: bytes, reactor: Any) -> defer.Deferred[ParsedMessage]:
    """``parse`` for the reactor thread: small messages at once, big ones in a thread."""
    if len(raw) <= INLINE_LIMIT:
        return defer.maybeDeferred(parse, raw)
    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), parse, raw)


def _header_text(msg: Message, name: str, value: Any) -> str:
    """A header field as decoded text; a field ``email`` cannot decode stays raw."""
    try:
        return str(msg.policy.header_fetch_parse(name, value))  # type: ignore[attr-defined]
    except Exception:
        return str(value)


def _leaves(part: Message) -> list[Message]:
    if part.get_content_maintype() == "multipart" and part.is_multipart():
        out: list[Message] = []
        for sub in part.get_payload():
            if isinstance(sub, Message):
                out.extend(_leaves(sub))
        return out
    return [part]


def _body(msg: Any, subtype: str) -> Message | None:
    """The part a mail reader would show as the ``text/<subtype>`` body."""
    if not isinstance(msg, EmailMessage):
        return None
    try:
        part = msg.get_body(preferencelist=(subtype,))
    except Exception:
        return None
    if part is None or part.get_content_type() != f"text/{subtype}":
        return None
    if part.get_content_disposition() == "attachment":
        return None
    return part


def _payload(part: Message) -> bytes:
    if part.get_content_type() == "message/rfc822" and part.is_multipart():
        inner = part.get_payload(0)
        return inner.as_bytes() if isinstance(inner, Message) else b""
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return data
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def _text(part: Message | None) -> str | None:
    if part is None:
        return None
    data = _payload(part)
    charset = part.get_content_charset() or "utf-8"
    try:
        text = data.decode(charset, "replace")
    except LookupError:  # an unknown charset name
        text = data.decode("utf-8", "replace")
    return text.replace("\r\n", "\n")


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        return None
    return str(name) if name else None


def _content_id(part: Message) -> str | None:
    value = part.get("Content-ID")
    return str(value).strip().strip("<>") or None if value is not None else None
