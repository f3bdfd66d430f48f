"""Message ids of the mail view: opaque, URL-safe, and enough to find the message again.

An id is the URL-safe base64 (no padding) of ``mailbox NUL folder NUL UIDVALIDITY NUL
UID``. It stays valid while the message exists; a message renumbered (a new
UIDVALIDITY) or gone gives ``NoSuchMessageId``, never another message.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from mailhost.mailview.interfaces import NoSuchMessageId


@dataclass(frozen=True)
class MessageRef:
    """Where one stored message is: account, folder, UIDVALIDITY and UID."""

    mailbox: str
    folder: str
    uid_validity: int
    uid: int


def encode_id(ref: MessageRef) -> str:
    raw = f"{ref.mailbox}\0{ref.folder}\0{ref.uid_validity}\0{ref.uid}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_id(message_id: str) -> MessageRef:
    """The reference in ``message_id``; ``NoSuchMessageId`` if it is not one of ours."""
    try:
        text = message_id.encode("ascii")
        raw = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
        mailbox, folder, validity, uid = raw.decode("utf-8").split("\0")
        ref = MessageRef(mailbox, folder, int(validity), int(uid))
    except (UnicodeError, binascii.Error, ValueError, AttributeError):
        raise NoSuchMessageId(message_id) from None
    if not ref.mailbox or not ref.folder or ref.uid <= 0:
        raise NoSuchMessageId(message_id)
    return ref
