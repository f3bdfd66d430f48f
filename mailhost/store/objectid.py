"""RFC 8474 object identifiers the stores hand out, and their syntax.

A MAILBOXID is the store's business (``IFolder.mailbox_id``: Maildir keeps Dovecot's
mailbox GUID, the header ``G`` of dovecot-uidlist, so both show the same folder the
same way). An EMAILID is derived here from ``MessageInfo.key``, the message's stable
storage name, so every store gets one that survives restarts, flag changes, MOVE and a
folder RENAME with no extra state. Maildir's key is the file's base name, which
Dovecot calls the message GUID; a base name holds ``.`` and ``,``, which an objectid
may not, so it is hashed rather than shown as is.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable
from typing import Any

#: The folder-cache key (``IFolder.get_cached``) of an EMAILID a message brought with it
#: from the folder it was copied or moved from.
EMAIL_ID_KEY = "emailid"

_OBJECTID = re.compile(r"[A-Za-z0-9_-]{1,255}\Z")


def is_objectid(value: str) -> bool:
    """True if ``value`` is an RFC 8474 objectid: 1-255 of ALPHA, DIGIT, ``_``, ``-``."""
    return _OBJECTID.match(value) is not None


def new_mailbox_id() -> str:
    """A fresh mailbox identifier, 32 hex digits as Dovecot's mailbox GUIDs."""
    return uuid.uuid4().hex


def email_id(key: str) -> str:
    """The EMAILID of the message stored under ``key``: ``M`` and 24 hex digits (96 bits
    of SHA-256), so it never starts with a digit (RFC 8474 section 5.1's advice)."""
    return "M" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def email_id_in(folder: Any, uid: int) -> str | None:
    """The EMAILID of message ``uid`` of ``folder`` (an ``IFolder``), or None if there is
    no such message: the one it was copied or moved with, else its key's."""
    carried = folder.get_cached(uid, EMAIL_ID_KEY)
    if carried is not None:
        return str(carried)
    info = folder.get(uid)
    return None if info is None else email_id(info.key)


def email_ids(folder: Any, uids: Iterable[int]) -> dict[int, str]:
    """``email_id_in`` of each of ``uids`` that exists, taken before a COPY or MOVE."""
    out = {}
    for uid in uids:
        got = email_id_in(folder, uid)
        if got is not None:
            out[uid] = got
    return out


def carry(pairs: list[tuple[int, int]], dest: Any,
          ids: dict[int, str]) -> list[tuple[int, int]]:
    """After a COPY or MOVE: each new message keeps its source's EMAILID (RFC 8474 5.1),
    cached in the destination folder; returns ``pairs`` for the caller's chain."""
    for src, new in pairs:
        if src in ids:
            dest.set_cached(new, EMAIL_ID_KEY, ids[src])
    return pairs
