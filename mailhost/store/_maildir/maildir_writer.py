"""MaildirMessageWriter: one incoming message, streamed to a tmp file, then committed
durably to every target folder (Implements: IMessageWriter).

It uses the folder's and account's named delivery API (``MaildirFolder.path``,
``learn_keywords``, ``delivery_uids``, ``expect_files``, ``settle_uids``,
``number_later``; ``MaildirAccount.folder``, ``loaded_folder``, ``number_unopened``)
and the store's ``committer`` and ``tmp_dir``, never their privates.

``write`` keeps a small message in memory (most mail is a few KiB) and spills to a
tmp file only past ``MEMORY_LIMIT``, so the reactor thread never opens or writes a
file for it: creating a file can stall behind a journal commit that another thread's
fsync started. ``commit`` then, in one worker-thread hop (shared with the messages
committing at the same time: batch_commit): write the tmp file (if it is still in
memory; with O_SYNC for one target, which makes it durable as an fsync would), fsync it
(unless that write did), move it into its target's new/ (cur/ for an IMAP APPEND
to the folder its session has selected: DeliveryTarget.recent) (copy on EXDEV;
for several targets all copies as one unit, through tmp/ and a commit journal:
maildir_io._commit_all), give it a UID there (dovecot-uidlist, under Dovecot's lock: maildir_uids); then a
group-commit round fsyncs those directories and uidlists. The Deferred fires only
after that, and after the UIDs are visible in the folder index.

A target with ``want_uid=False`` (SMTP: nobody reads the UID) skips the UID step: the
file is as durable when the Deferred fires, and gets its UID afterwards, off the
delivery's path, as mail another MDA drops into new/ does. If its folder is open in
this process the folder is told on the reactor and numbers what arrived meanwhile in
one batch (MaildirFolder.number_later: one lock round for many deliveries); else the
file is adopted when the folder is next opened, and an unopened INBOX is not opened
for it. A crash in between leaves a durable file in new/, numbered at the next open.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, BinaryIO

from twisted.internet import defer
from zope.interface import implementer

from mailhost.message.crlf import CRLFNormalizer
from mailhost.store._maildir import maildirsize
from mailhost.store._maildir.maildir_folder import MaildirFolder, Row, delivered_row
from mailhost.store._maildir.maildir_io import DeliveryJob
from mailhost.store._maildir.maildir_names import Keywords, filename, make_info, unique_base
from mailhost.store.flags import normalize_flags
from mailhost.store.interfaces import DeliveryTarget, IMessageWriter, StoreError
from mailhost.store.names import INBOX, canonical_folder

if TYPE_CHECKING:  # these import this module
    from mailhost.store._maildir.maildir_account import MaildirAccount
    from mailhost.store.maildir import MaildirStore

WRITE_BUFFER = 64 * 1024
#: Messages up to this size stay in memory until commit; larger ones stream to disk.
MEMORY_LIMIT = 256 * 1024
#: Where one copy goes: (open folder or None, account, folder path, base name, info,
#: into new/ rather than cur/).
_Placed = tuple["MaildirFolder | None", "MaildirAccount", str, str, str | None, bool]


@implementer(IMessageWriter)
class MaildirMessageWriter:
    """Implements: IMessageWriter. One tmp file, linked into every target on commit."""

    def __init__(self, store: MaildirStore) -> None:
        self._store = store
        self._norm = CRLFNormalizer(keep_bare_cr=True)  # as Dovecot stores it
        self.size = 0
        self._done = False
        self._path = os.path.join(store.tmp_dir(), unique_base(0).split(",")[0])
        self._file: BinaryIO | None = None
        self._buffer: bytearray | None = bytearray()

    def write(self, data: bytes) -> None:
        if self._done:
            raise StoreError("write after commit/abort")
        out = self._norm.feed(data)
        self.size += len(out)
        if self._buffer is None:
            assert self._file is not None  # the buffer went to this file
            self._file.write(out)
            return
        self._buffer += out
        if len(self._buffer) > MEMORY_LIMIT:
            # Large message: stream the rest through the page cache (bounded memory).
            self._file = os.fdopen(self._store.modes.open_new(self._path), "wb",
                                   buffering=WRITE_BUFFER)
            self._file.write(self._buffer)
            self._buffer = None

    def commit(self, targets: Sequence[DeliveryTarget]) -> defer.Deferred[list[int | None]]:
        if self._done:
            return defer.fail(StoreError("commit after commit/abort"))
        self._done = True
        return defer.Deferred.fromCoroutine(self._commit(list(targets)))

    async def _commit(self, targets: list[DeliveryTarget]) -> list[int | None]:
        store = self._store
        # One file, one mtime: the first target's date (or now) is every copy's
        # INTERNALDATE, here and for Dovecot, which reads it from the mtime.
        first = targets[0].internal_date if targets else None
        date = int(time.time()) if first is None else int(first)
        try:
            plan = [await self._place(t) for t in targets]
        except BaseException:
            self._discard()
            raise
        for folder, _, _, base, _, _ in plan:
            if folder is not None:
                folder.expect_files([base])
        tickets: list[list[int] | None] = [[] if t.want_uid else None for t in targets]
        jobs: list[DeliveryJob] = []
        for (folder, _, path, base, part, in_new), ticket in zip(plan, tickets, strict=True):
            uids = None if folder is None or ticket is None else folder.delivery_uids()
            rel = os.path.join("new" if in_new else "cur", filename(base, part))
            jobs.append((path, rel, base, self.size, uids, ticket))
        told = False
        try:
            try:
                # The copies count against quota once durable, in the same hop.
                await store.committer.commit(
                    (self._file, self._path, date, jobs, store.modes,
                     None if self._buffer is None else bytes(self._buffer),
                     store.new_files_fit(), _charges(plan, self.size)))
                self._buffer = None
            except BaseException:
                for (folder, *_), ticket in zip(plan, tickets, strict=True):
                    if ticket is not None:
                        assert folder is not None  # a copy that wants a UID opens it
                        folder.settle_uids([(uid, None) for uid in ticket])
                raise
            # Durable now. Copies nobody waits a UID for are numbered in the folder's
            # next batch (or when it is opened); the others are settled here.
            for (folder, account, _, base, part, in_new), ticket in zip(
                    plan, tickets, strict=True):
                if ticket is None:
                    row = delivered_row(base, part, self.size, date, in_new)
                    if folder is not None:
                        folder.number_later([row])
                    else:
                        account.number_unopened(row)
            told = True
            by_folder: dict[int, tuple[MaildirFolder, list[tuple[int, Row]]]] = {}
            for (folder, _, _, base, part, in_new), ticket in zip(plan, tickets, strict=True):
                if ticket is None:
                    continue
                assert folder is not None  # a copy that wants a UID opens it
                row = delivered_row(base, part, self.size, date, in_new)
                by_folder.setdefault(id(folder), (folder, []))[1].append((ticket[0], row))
            if by_folder:  # SMTP's copies want no UID: no DeferredList to wait on
                await defer.gatherResults(
                    [f.settle_uids(items) for f, items in by_folder.values()],
                    consumeErrors=True)
        finally:
            for (folder, _, _, base, _, _), ticket in zip(plan, tickets, strict=True):
                # A copy handed to the numbering batch stays expected until numbered.
                if folder is not None and not (told and ticket is None):
                    folder.unexpect_files([base])
        return [None if ticket is None else ticket[0] for ticket in tickets]

    async def _place(self, target: DeliveryTarget) -> _Placed:
        """(open folder or None, account, folder path, base name, info part, into new/)
        of one copy. A copy that wants no UID does not open its
        folder: an unopened INBOX gets the file, numbered when the folder is opened."""
        store = self._store
        flags = normalize_flags(target.flags)
        account = await store.account(target.user)
        canon = canonical_folder(target.folder)
        folder: MaildirFolder | None
        if target.want_uid:
            folder = await account.folder(canon)
        else:
            folder = account.loaded_folder(canon)
            if folder is None and (canon != INBOX
                                   or any(not f.startswith("\\") for f in flags)):
                # Another folder must exist (opening checks), and keywords need the
                # folder's letter map: open it.
                folder = await account.folder(canon)
        if folder is None:  # (SMTP's copy has no flags: no letters to work out)
            path = account.folder_path(INBOX)
            letters = Keywords().letters_of(flags) if flags else ""
        else:
            await folder.learn_keywords(flags)
            path, letters = folder.path, folder.letters(flags)
        return (folder, account, path, unique_base(self.size),
                make_info(letters, in_new=target.recent), target.recent)

    def _discard(self) -> None:
        self._buffer = None
        if self._file is None:
            return
        self._file.close()
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._discard()


def _charges(plan: list[_Placed], size: int) -> list[maildirsize.Change]:
    """The changes that count the copies in their users' quota (maildir_quota), one
    per account, added in the commit's worker thread once the copies are durable."""
    counts: dict[int, tuple[MaildirAccount, int]] = {}
    for _, account, *_ in plan:
        counts[id(account)] = (account, counts.get(id(account), (account, 0))[1] + 1)
    return [account.charge_in_thread(size * n, n) for account, n in counts.values()]
