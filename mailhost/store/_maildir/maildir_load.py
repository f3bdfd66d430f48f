"""Writing one account as a Maildir++ tree with given UIDs (``store import``/``export``).

What the store (and Dovecot) would have written: each message a file in ``cur/``
named with its flags' letters (keywords through ``dovecot-keywords``) and dated by
its mtime, each folder's ``dovecot-uidlist`` with the source's UIDVALIDITY, next UID
and mailbox GUID (the RFC 8474 MAILBOXID, 32 hex digits both ways) and one record per
message, and the account's ``subscriptions`` and ``mailhost-special-use``. The
account must not exist yet. Mod-sequences start afresh (the store numbers a folder
it has never seen); UIDs, which is what clients cache, do not change.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable
from typing import BinaryIO

from zope.interface import implementer

from mailhost.store._maildir import maildir_io
from mailhost.store._maildir.dovecot_uidlist import UIDLIST_FILE, Header, format_record
from mailhost.store._maildir.maildir_names import (
    KEYWORDS_FILE,
    Keywords,
    filename,
    make_info,
    unique_base,
)
from mailhost.store.interfaces import StoreError
from mailhost.store.modes import PRIVATE, FileModes
from mailhost.store.names import INBOX, split_user
from mailhost.store.transfer import IAccountLoader

_GUID = re.compile(r"^[0-9a-f]{32}$")
_COPY_CHUNK = 256 * 1024


@implementer(IAccountLoader)
class MaildirLoader:
    """Implements: IAccountLoader on a Maildir++ root (the store's ``root``).
    StoreError if the user's Maildir exists already."""

    def __init__(self, root: str, user: str, fsync: bool = True,
                 modes: FileModes = PRIVATE) -> None:
        local, domain = split_user(user)
        self._root = os.path.join(os.path.abspath(root), domain, local)
        if os.path.exists(self._root):
            raise StoreError(f"{user}: the Maildir {self._root} exists already")
        self._fsync = fsync
        self._modes = modes
        maildir_io.make_maildir(self._root, folder=False, modes=modes)
        self._special: dict[str, str] = {}
        self._path = ""
        self._header: Header | None = None
        self._records: list[str] = []
        self._keywords = Keywords()

    def folder(self, name: str, uid_validity: int, uid_next: int, highest_modseq: int,
               special_use: str | None, mailbox_id: str) -> None:
        self._end_folder()
        if name == INBOX:
            self._path = self._root
        else:
            self._path = os.path.join(self._root, maildir_io.folder_dir_name(name))
            maildir_io.make_maildir(self._path, folder=True, modes=self._modes)
        if special_use:
            self._special[name] = special_use
        guid = mailbox_id if _GUID.match(mailbox_id or "") else uuid.uuid4().hex
        self._header = Header(uid_validity, uid_next, guid)
        self._records = []
        self._keywords = Keywords()

    def message(self, uid: int, flags: frozenset[str], internal_date: float, modseq: int,
                body: BinaryIO) -> None:
        if self._header is None:
            raise StoreError("a message before its folder")
        self._keywords.assign(f for f in flags if not f.startswith("\\"))
        tmp = os.path.join(self._path, "tmp", f"import.{uid}.{os.getpid()}")
        fd = self._modes.open_new(tmp)
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := body.read(_COPY_CHUNK):
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                if self._fsync:
                    maildir_io.fdatasync(out.fileno())
            os.utime(tmp, (internal_date, internal_date))
            base = unique_base(size)
            info = make_info(self._keywords.letters_of(flags), in_new=False)
            os.rename(tmp, os.path.join(self._path, "cur", filename(base, info)))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._records.append(format_record(uid, base))

    def _end_folder(self) -> None:
        if self._header is None:
            return
        if self._keywords.by_index:
            maildir_io.write_atomic(os.path.join(self._path, KEYWORDS_FILE),
                                    self._keywords.serialize(), self._fsync, self._modes)
        maildir_io.write_atomic(os.path.join(self._path, UIDLIST_FILE),
                                self._header.line() + "".join(self._records),
                                self._fsync, self._modes)
        self._header = None

    def finish(self, subscriptions: Iterable[str]) -> None:
        self._end_folder()
        maildir_io.write_atomic(os.path.join(self._root, maildir_io.SUBSCRIPTIONS_FILE),
                                "".join(f"{n}\n" for n in subscriptions), self._fsync,
                                self._modes)
        maildir_io.write_atomic(os.path.join(self._root, maildir_io.SPECIAL_USE_FILE),
                                "".join(f"{n}\t{u}\n" for n, u in sorted(self._special.items())),
                                self._fsync, self._modes)

    def abort(self) -> None:
        """The tree stays for a look (it is new: remove it and run again)."""
