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
