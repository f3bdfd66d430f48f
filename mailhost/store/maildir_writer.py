"""MaildirMessageWriter: one incoming message, streamed to a tmp file, then committed
durably to every target folder (Implements: IMessageWriter).

``write`` keeps a small message in memory (most mail is a few KiB) and spills to a
tmp file only past ``MEMORY_LIMIT``, so the reactor thread never opens or writes a
file for it: creating a file can stall behind a journal commit that another thread's
fsync started. ``commit`` then, in one worker-thread hop: write the tmp file (if it is
still in memory), fdatasync it, hard-link it into each
target's new/ (copy on EXDEV), give it a UID there (dovecot-uidlist, under Dovecot's
lock: maildir_uids); then a group-commit round fsyncs the new/ directories and
uidlists. The Deferred fires only after that, and
after the UIDs are visible in the folder index.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from twisted.internet import defer
from zope.interface import implementer

from mailhost.store.crlf import CRLFNormalizer
from mailhost.store.flags import normalize_flags
from mailhost.store.interfaces import DeliveryTarget, IMessageWriter, StoreError
from mailhost.store.maildir_io import deliver_files
from mailhost.store.maildir_names import filename, make_info, unique_base

WRITE_BUFFER = 64 * 1024
#: Messages up to this size stay in memory until commit; larger ones stream to disk.
MEMORY_LIMIT = 256 * 1024


@implementer(IMessageWriter)
class MaildirMessageWriter:
    """Implements: IMessageWriter. One tmp file, linked into every target on commit."""

    def __init__(self, store) -> None:
        self._store = store
        self._norm = CRLFNormalizer()
        self.size = 0
        self._done = False
        self._path = os.path.join(store._tmp_dir(), unique_base(0).split(",")[0])
        self._file = None
        self._buffer: bytearray | None = bytearray()

    def write(self, data: bytes) -> None:
        if self._done:
            raise StoreError("write after commit/abort")
        out = self._norm.feed(data)
        self.size += len(out)
        if self._buffer is None:
            self._file.write(out)
            return
        self._buffer += out
        if len(self._buffer) > MEMORY_LIMIT:
            # Large message: stream the rest through the page cache (bounded memory).
            self._file = os.fdopen(self._store.modes.open_new(self._path), "wb",
                                   buffering=WRITE_BUFFER)
            self._file.write(self._buffer)
            self._buffer = None

    def commit(self, targets: Sequence[DeliveryTarget]):
        if self._done:
            return defer.fail(StoreError("commit after commit/abort"))
        self._done = True
        return defer.Deferred.fromCoroutine(self._commit(list(targets)))

    async def _commit(self, targets: list[DeliveryTarget]) -> list[int]:
        store = self._store
        # One file, one mtime: the first target's date (or now) is every copy's
        # INTERNALDATE, here and for Dovecot, which reads it from the mtime.
        first = targets[0].internal_date if targets else None
        date = int(time.time()) if first is None else int(first)
        try:
            folders = [await store._folder(t.user, t.folder) for t in targets]
            plan = []
            for folder, target in zip(folders, targets, strict=True):
                flags = normalize_flags(target.flags)
                await folder._learn_keywords(flags)
                part = make_info(folder._letters(flags), in_new=True)
                plan.append((folder, unique_base(self.size), part))
        except BaseException:
            self._discard()
            raise
        for folder, base, _ in plan:
            folder._expect([base])
        tickets: list[list[int]] = [[] for _ in plan]
        jobs = [(f._path, filename(base, part), base, self.size, f._file_lock, f._kwfile,
                 f._uids, ticket)
                for (f, base, part), ticket in zip(plan, tickets, strict=True)]
        try:
            try:
                await store._in_thread(deliver_files, self._file, self._path, date, jobs,
                                       store._sync if store.fsync else None, store.modes,
                                       None if self._buffer is None else bytes(self._buffer))
                self._buffer = None
            except BaseException:
                for (folder, _, _), ticket in zip(plan, tickets, strict=True):
                    folder._settle([(uid, None) for uid in ticket])
                raise
            by_folder: dict[int, tuple[object, list]] = {}
            for (folder, base, part), ticket in zip(plan, tickets, strict=True):
                row = folder._row(base, True, part, False, self.size, date, ticket[0])
                by_folder.setdefault(id(folder), (folder, []))[1].append((ticket[0], row))
            await defer.gatherResults([f._settle(items) for f, items in by_folder.values()],
                                      consumeErrors=True)
        finally:
            for folder, base, _ in plan:
                folder._unexpect([base])
        return [ticket[0] for ticket in tickets]

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
