"""What the mail view reads out of message bytes: the header fields of a summary and
the decoded text of the text parts (for body search).

Both run on bytes already read (headers: a bounded prefix) or in the thread pool
(``body_text`` takes the message as a blocking file, through ``IMessageReader.call``).
Malformed mail never raises: a header that does not parse is shown as its raw text.
"""

from __future__ import annotations

import email.policy
import email.utils
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
from typing import IO, Any, NamedTuple

#: How much of a message is read for its summary; a header longer than this is cut.
HEADER_LIMIT = 64 * 1024
#: Body search reads at most this much decoded text of one message.
TEXT_LIMIT = 4 * 1024 * 1024


class HeaderFields(NamedTuple):
    """The header part of a ``MessageSummary``."""

    sender: str | None
    from_: str | None
    to: tuple[str, ...]
    subject: str | None


def header_block(data: bytes) -> bytes:
    """The header section of a message's first octets (to the blank line, if any)."""
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 4]


def _text(msg: Message, name: str) -> str | None:
    try:
        value = msg.get(name)
    except Exception:  # a header the policy cannot parse: show it raw
        value = None
        for key, raw in msg.raw_items():
            if key.lower() == name.lower():
                value = raw
                break
    if value is None:
        return None
    return str(value)


def parse_header_fields(head: bytes) -> HeaderFields:
    """Return-Path, From, To/Cc addresses and Subject of a header block."""
    msg = BytesHeaderParser(policy=email.policy.default).parsebytes(head)
    return_path = _text(msg, "Return-Path")
    sender = None if return_path is None else return_path.strip().strip("<>").strip()
    values: list[str] = []
    for name in ("To", "Cc"):
        try:
            got = msg.get_all(name) or []
        except Exception:
            got = [raw for key, raw in msg.raw_items() if key.lower() == name.lower()]
        values.extend(str(v) for v in got)
    to = tuple(addr for _, addr in email.utils.getaddresses(values) if addr)
    return HeaderFields(sender, _text(msg, "From"), to, _text(msg, "Subject"))


def _part_text(part: EmailMessage) -> str:
    try:
        content = part.get_content()
    except Exception:
        payload: Any = part.get_payload(decode=True) or b""
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


def body_text(file: IO[bytes]) -> str:
    """The decoded text of every text part that is not an attachment (thread side)."""
    try:
        msg = BytesParser(policy=email.policy.default).parse(file)
    except Exception:
        return ""
    out: list[str] = []
    size = 0
    parts = msg.walk() if msg.is_multipart() else [msg]
    for part in parts:
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        if part.get_content_disposition() == "attachment":
            continue
        text = _part_text(part)  # type: ignore[arg-type]
        out.append(text)
        size += len(text)
        if size > TEXT_LIMIT:
            break
    return "\n".join(out)[:TEXT_LIMIT]


def without_return_path(data: bytes) -> tuple[int, bool]:
    """Octets at the start of ``data`` taken by a leading ``Return-Path:`` field (with
    its folded lines), and whether the whole field was seen (``data`` is a prefix)."""
    if data[:12].lower() != b"return-path:":
        return 0, True
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return 0, False
        pos = end + 2
        if data[pos:pos + 1] not in (b" ", b"\t"):
            return pos, True
