"""SAVEDATE (RFC 8514) and OBJECTID (RFC 8474): the IMAP side.

The store gives each folder its ``mailbox_id`` and each message its save date
(``IFolder.save_dates``); an EMAILID is derived from ``MessageInfo.key``
(``mailhost.store.objectid``). THREADID is NIL for every message, as RFC 8474 5.2
allows a server that does not thread on its own (and as Dovecot would): SEARCH THREADID
then matches nothing. Save dates and EMAILIDs never change, so SEARCH SAVED*/EMAILID
read them once per command, in bulk.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from mailhost.imap.encoding import format_datetime
from mailhost.imap.parser import SearchKey
from mailhost.store.interfaces import IFolder, MessageInfo
from mailhost.store.objectid import email_id, email_id_in

CAPABILITIES = (b"OBJECTID", b"SAVEDATE")

#: SEARCH keys answered from save dates, and the date comparison each makes.
SAVED_KEYS = {"SAVEDBEFORE": "BEFORE", "SAVEDON": "ON", "SAVEDSINCE": "SINCE"}


def mailbox_id_code(folder: IFolder) -> bytes:
    """``[MAILBOXID (id)] `` for a tagged OK (CREATE)."""
    return b"[MAILBOXID (" + folder.mailbox_id.encode("ascii") + b")] "


def mailbox_id_line(folder: IFolder) -> bytes:
    """The untagged OK of SELECT/EXAMINE (RFC 8474 4.2)."""
    return b"* OK " + mailbox_id_code(folder) + b"Ok\r\n"


def status_value(folder: IFolder) -> bytes:
    return b"(" + folder.mailbox_id.encode("ascii") + b")"


def email_id_of(folder: IFolder, info: MessageInfo) -> str:
    return email_id_in(folder, info.uid) or email_id(info.key)


def fetch_value(name: str, folder: IFolder, info: MessageInfo,
                saved: dict[int, float] | None) -> bytes:
    """EMAILID, THREADID or SAVEDATE (``saved`` from ``folder.save_dates``)."""
    if name == "EMAILID":
        return b"(" + email_id_of(folder, info).encode("ascii") + b")"
    if name == "THREADID":
        return b"NIL"
    date = None if saved is None else saved.get(info.uid)
    return b"NIL" if date is None else format_datetime(date)


def uses(key: SearchKey, ops: Iterable[str]) -> bool:
    """True if ``key`` (or a key inside it) is one of ``ops``."""
    wanted = set(ops)

    def walk(k: SearchKey) -> bool:
        if k.op in wanted:
            return True
        return k.op in ("AND", "OR", "NOT") and any(walk(a) for a in k.args)

    return walk(key)


def matches(op: str, arg: object, folder: IFolder, info: MessageInfo,
            saved: dict[int, float] | None) -> bool | None:
    """The answer of an RFC 8514/8474 SEARCH key for one message, or None when ``op``
    is not one of them."""
    if op == "SAVEDATESUPPORTED":
        return True  # every store keeps save dates
    if op == "EMAILID":
        return email_id_of(folder, info) == arg
    if op == "THREADID":
        return False
    if op in SAVED_KEYS:
        date = None if saved is None else saved.get(info.uid)
        if date is None:
            return False
        have = datetime.datetime.fromtimestamp(date, datetime.UTC).date()
        want = arg
        assert isinstance(want, datetime.date)
        cmp = SAVED_KEYS[op]
        return have < want if cmp == "BEFORE" else have == want if cmp == "ON" else have >= want
    return None
