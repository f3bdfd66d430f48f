"""FolderRescan: what other programs did to a Maildir folder, found and applied.

Dovecot, mutt, procmail and another worker of ours rename, unlink and add files
behind the folder's back. A rescan lists new/ and cur/ (maildir_index.diff_folder)
and compares them with the index, unless the directories' times say nothing changed
since the last full listing (``stamp``); the watch's events (maildir_disk_watch) can
say the same without a listing. Either way the outcome is applied here: renamed
messages get the flags their new names say, gone ones leave the index, and files
nobody numbered yet are adopted: given the UID the uidlist already has for the name
(Dovecot's APPEND, or Dovecot saw it first), else a new one under its lock.

Every method runs with the folder lock held.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from mailhost.store._maildir.dovecot_keywords import KeywordMap
from mailhost.store._maildir.maildir_index import (
    FolderIndex,
    Snapshot,
    diff_folder,
    examine_foreign,
)
from mailhost.store._maildir.maildir_keywords import FolderKeywords
from mailhost.store._maildir.maildir_numbering import Row, UidHandOver
from mailhost.store._maildir.maildir_uids import FolderUids
from mailhost.store.interfaces import MessageInfo

#: ``diff_folder``'s answer: (stamp, renamed [(uid, recent, part)], gone UIDs, unknown
#: files [(subdir, name)]).
Diff = tuple[tuple[int, int] | None, list[tuple[int, bool, str | None]], list[int],
             list[tuple[str, str]]]


class FolderRescan:
    """The rescans of one MaildirFolder (see the module docstring).

    Built with: ``run_blocking`` (the store's thread helper), ``uids`` (the folder's
    FolderUids), ``handover`` (its UidHandOver: adopted files settle through it, and
    files being linked in by us are left to it), ``keywords`` (its FolderKeywords,
    whose file a rescan re-reads), ``index`` and ``path`` (its current index and
    directory), ``uid_next_at_least(n)`` (UIDNEXT moves up to ``n``), ``changed``
    (tell listeners) and ``expunged`` (take UIDs out of the folder and tell)."""

    def __init__(self, run_blocking: Callable[..., defer.Deferred[Any]], uids: FolderUids,
                 handover: UidHandOver, keywords: FolderKeywords,
                 index: Callable[[], FolderIndex], path: Callable[[], str],
                 uid_next_at_least: Callable[[int], None],
                 changed: Callable[[list[MessageInfo]], None],
                 expunged: Callable[[list[int]], None]) -> None:
        self._run_blocking = run_blocking
        self._uids = uids
        self._handover = handover
        self._keywords = keywords
        self._index = index
        self._path = path
        self._uid_next_at_least = uid_next_at_least
        self._changed = changed
        self._expunged = expunged
        self.stamp: tuple[int, int] | None = None  # dir mtimes at the last full scan
        #: Directory listings done to pick up others' changes (a test hook).
        self.listings = 0

    def relist(self) -> None:
        """The next rescan lists the directories, whatever their times say."""
        self.stamp = None

    async def rescan(self, force: bool = False) -> None:
        """Compare the directories with the index (the listing is skipped when their
        times say nothing changed, unless ``force``) and apply what others changed."""
        index = self._index()
        path, uids, kwfile = self._path(), self._uids, self._keywords.file
        last = None if force else self.stamp

        def work(snapshot: Snapshot, last_stamp: tuple[int, int] | None,
                 ) -> tuple[KeywordMap | None, Diff, int]:
            # UIDNEXT moves when another program gives out UIDs, even for mail it
            # expunged before we listed it; dovecot-keywords when it gives out letters
            # (read before the listing, so names using them are understood).
            keywords = kwfile.current(wait=False)
            diff = diff_folder(path, snapshot, last_stamp)
            if diff[2]:
                # Some indexed files were not found. Another program may have been
                # renaming them while we listed (Dovecot moves files new/ -> cur/
                # under the uidlist lock): list again under it before calling them
                # gone, or they would come back later under new UIDs.
                diff = uids.locked(diff_folder, path, snapshot, None)
            return keywords, diff, uids.next_uid_nowait()

        got: tuple[KeywordMap | None, Diff, int] = await self._run_blocking(
            work, index.snapshot(), last)
        keywords, (stamp, renamed, gone, foreign), next_uid = got
        self._keywords.apply(keywords)
        self._uid_next_at_least(next_uid)
        if stamp is None or stamp != last:
            self.listings += 1
        # Our own renames change the directories too, so only a stamp taken here, with
        # no change of ours in between (the lock is held), may skip the next listing.
        self.stamp = stamp
        await self.apply(renamed, gone, foreign)

    async def read_uid_next(self) -> None:
        """UIDNEXT as the uidlist has it now (another program gave out UIDs)."""
        next_uid: int = await self._run_blocking(self._uids.next_uid_nowait)
        self._uid_next_at_least(next_uid)

    async def apply(self, renamed: list[tuple[int, bool, str | None]],
                    gone: list[int], foreign: list[tuple[str, str]]) -> None:
        """Others' changes, from a listing or from the watch's events: (uid, in new/,
        info part) of renamed messages, the UIDs of gone ones, and (subdir, name) of
        files to give UIDs to."""
        index = self._index()
        changed: list[MessageInfo] = []
        for uid, recent, part in renamed:
            i = index.pos(uid)
            if i < 0:
                continue
            old_flags = index.state_at(i).flags
            index.states[i] = sid = index.state(part, recent)
            if index.table[sid].flags != old_flags:
                changed.append(index.info_at(i))
        gone = [uid for uid in gone if uid in index]
        self._expunged(gone)
        self._changed(changed)
        pending = self._handover.pending
        foreign = [(sub, name) for sub, name in foreign
                   if name.partition(":")[0] not in pending
                   and name.partition(":")[0] not in index.by_base]
        if foreign:
            await self.adopt(foreign)

    async def adopt(self, foreign: list[tuple[str, str]]) -> None:
        """Give UIDs to files another program put in new/ or cur/: the UID the
        uidlist already has for the name (Dovecot's APPEND, or Dovecot saw it first),
        else a new one under the lock."""
        handover = self._handover
        bases = [name.partition(":")[0] for _, name in foreign]
        handover.expect(bases)
        ticket: list[int] = []
        try:
            path, uids = self._path(), self._uids

            def work() -> tuple[list[tuple[str, str, int, bool, int]], list[int]]:
                examined = examine_foreign(path, foreign)
                if not examined:
                    return examined, []
                got = uids.lookup([name.partition(":")[0] for _, name, *_ in examined],
                                  ticket, [(mtime, size, wrap)
                                           for _, _, size, wrap, mtime in examined])
                return examined, got

            try:
                found: tuple[list[tuple[str, str, int, bool, int]], list[int]] = \
                    await self._run_blocking(work)
            except BaseException:
                handover.settle([(uid, None) for uid in ticket])
                raise
            examined, got = found
            rows: list[tuple[int, Row | None]] = []
            for (sub, name, size, wrap, mtime), uid in zip(examined, got, strict=True):
                base, sep, part = name.partition(":")
                rows.append((uid, (base, sub == "new", part if sep else None, wrap, size,
                                   float(mtime))))
            if rows:
                await handover.settle(rows)
        finally:
            handover.unexpect(bases)
