"""ChangePasses: a Maildir folder's flag changes, expunges and \\Recent claims.

Each renames or unlinks files under the folder lock. Under a 10-client IMAP load
(issue 16) every STORE, EXPUNGE and \\Recent claim queued on that lock with a thread
hop of its own, and the lock was busy most of the time. So the ones that wait for the
lock together run as one pass (lock_passes.LockPasses), in the order they were asked
for, with one thread hop under the uidlist lock for all their renames and unlinks,
each file renamed at most once. When another program renamed or removed a file
meanwhile, the folder is listed again and what failed is done once more, one request
at a time (the folder's ``flags_again`` and ``expunge_again``).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.python.failure import Failure

from mailhost.store._maildir import maildirsize
from mailhost.store._maildir.lock_passes import LockPasses
from mailhost.store._maildir.maildir_dates import FolderDates
from mailhost.store._maildir.maildir_disk_watch import DiskWatch
from mailhost.store._maildir.maildir_index import FolderIndex
from mailhost.store._maildir.maildir_io import rename_all, unlink_all
from mailhost.store._maildir.maildir_keywords import FolderKeywords
from mailhost.store._maildir.maildir_names import filename, info_letters, make_info
from mailhost.store._maildir.maildir_rescan import FolderRescan
from mailhost.store._maildir.maildir_uids import FolderUids
from mailhost.store.flags import apply_mode, normalize_flags
from mailhost.store.interfaces import MessageInfo, NoSuchFolder, StoreError
from mailhost.store.modseq import with_modseq

if TYPE_CHECKING:  # it imports maildir_folder, which imports this module
    from mailhost.store._maildir.maildir_account import MaildirAccount

#: A pass of at most this many renames and no unlinks renames on the reactor thread
#: when the uidlist lock is free at once (see ``_rename_and_unlink``); 0: never.
#: Measured on a quiet host (bench/imap_load.py's 10 clients, mailhost alone, two A/B
#: pairs each): paced at Dovecot's 1,350 commands/s the median command went from
#: 1.16-1.21 to 0.85-0.91 ms (STORE 2.1-2.3 -> 0.9 ms, CPU per command 0.71-0.74 ->
#: 0.60-0.62 ms); in the closed loop from 2.39-2.40 to 2.15-2.21 ms at 1-8 % more
#: commands/s, NOOP's median 0.15-0.2 ms worse. (In loaded runs, with a test suite
#: beside it, NOOP and APPEND got worse: the reactor then waits on the directory the
#: fsyncing APPENDs share.)
INLINE_RENAMES = 8


#: One change waiting for its pass (``ChangePasses._pass``), the caller last:
#: (FLAGS, UIDs ascending, flags, mode, caller) of ``set_flags``;
#: (EXPUNGE, the UIDs it is restricted to or None for every \Deleted message, None,
#: None, caller) of ``expunge``; (CLAIM, UIDs, None, None, caller) of the renames
#: new/ -> cur/ of ``claim_recent``.
ChangeRequest = tuple[str, Any, Any, Any, "defer.Deferred[Any]"]
FLAGS, EXPUNGE, CLAIM = "flags", "expunge", "claim"


class ChangePasses:
    """set_flags, expunge and claim_recent of one MaildirFolder (see the module
    docstring).

    Built with what a pass uses of the folder: ``run`` (a coroutine function under
    the folder lock, failing with NoSuchFolder once it is gone), ``run_blocking``
    (the store's thread helper), ``index`` and ``path`` (its current index and
    directory), ``account`` (quota: ``charge`` and ``charge_in_thread``), its parts
    ``uids`` (the uidlist lock), ``disk`` (our names in flight), ``dates`` (dates the
    answers carry), ``keywords`` (letters of new keywords) and ``rescan``; and
    ``changed`` and ``expunged`` (index and listeners), ``compact_if_stale`` (the
    uidlist after many expunges), ``modseq_of`` (the answers' modseqs), and
    ``flags_again`` and ``expunge_again`` (one request done again after a rescan)."""

    def __init__(self, *, run: Callable[..., defer.Deferred[None]],
                 run_blocking: Callable[..., defer.Deferred[Any]],
                 index: Callable[[], FolderIndex], path: Callable[[], str],
                 account: MaildirAccount, uids: FolderUids, disk: DiskWatch,
                 dates: FolderDates, keywords: FolderKeywords, rescan: FolderRescan,
                 changed: Callable[[list[MessageInfo]], None],
                 expunged: Callable[[list[int]], None],
                 compact_if_stale: Callable[[], Awaitable[None]],
                 modseq_of: Callable[[int], int],
                 flags_again: Callable[[list[tuple[list[int], frozenset[str], str]],
                                        list[dict[int, MessageInfo]]], Awaitable[set[int]]],
                 expunge_again: Callable[[set[int] | None], Awaitable[list[int]]]) -> None:
        self._run_blocking = run_blocking
        self._index = index
        self._path = path
        self._account = account
        self._uids = uids
        self._disk = disk
        self._dates = dates
        self._kw = keywords
        self._rescan = rescan
        self._changed = changed
        self._expunged = expunged
        self._compact_if_stale = compact_if_stale
        self._modseq_of = modseq_of
        self._flags_again = flags_again
        self._expunge_again = expunge_again
        #: Requests that wait for the lock together run as one pass, one thread hop.
        self._passes: LockPasses[ChangeRequest] = LockPasses(run, self._pass, self._failed)

    def set_flags(self, uids: Iterable[int], flags: Iterable[str],
                  mode: str) -> defer.Deferred[list[MessageInfo]]:
        """Changes that wait for the folder lock together run as one pass, in the
        order they were asked for, with one thread hop for all their renames (issue
        16: under a 10-client load, STOREs queued on the lock one hop each)."""
        try:
            wanted = normalize_flags(flags)
            apply_mode(frozenset(), wanted, mode)
        except StoreError:
            return defer.fail()
        d: defer.Deferred[list[MessageInfo]] = defer.Deferred()
        self._passes.join((FLAGS, sorted(set(uids)), wanted, mode, d))
        return d

    def expunge(self, uids: Iterable[int] | None = None) -> defer.Deferred[list[int]]:
        """Expunges that wait for the folder lock together run as one pass with one
        thread hop (issue 16, as ``set_flags``); a UID goes to the first of them, in
        the order asked, whose selection has it."""
        d: defer.Deferred[list[int]] = defer.Deferred()
        self._passes.join((EXPUNGE, None if uids is None else set(uids), None, None, d))
        return d

    def claim_recent(self) -> defer.Deferred[set[int]]:
        """The claim takes effect at once, on the reactor thread: its messages leave
        the recent set (``FolderIndex.claimed``) before this returns, so a session
        that looks next (NOOP, SELECT, EXAMINE, STATUS) sees them as not recent
        without waiting for anything. Their renames new/ -> cur/ follow under the
        folder lock, and the Deferred fires with those that moved (a file another
        program renamed meanwhile stays the other's). Claims made while renames wait
        for the lock share one pass. (Issue 16: under a 10-client load, most NOOPs
        waited on the lock for another session's claim to land.)"""
        index = self._index()
        fresh = index.recent_uids()
        if not fresh:
            return defer.succeed(set())
        index.claimed.update(fresh)
        d: defer.Deferred[set[int]] = defer.Deferred()
        self._passes.join((CLAIM, fresh, None, None, d))
        return d

    def _failed(self, batch: list[ChangeRequest], f: Failure) -> None:
        """A pass that could not run: claims give their messages back to the recent
        set (a folder gone has nothing left to claim); other callers get the error."""
        for kind, uids, _, _, waiter in batch:
            if waiter.called:
                continue
            if kind == CLAIM:
                self._index().claimed.difference_update(uids)
                if f.check(NoSuchFolder):
                    waiter.callback(set())
                    continue
            waiter.errback(f)

    async def _pass(self, batch: list[ChangeRequest]) -> None:
        """Flag changes, expunges and \\Recent claims that waited for the lock together,
        applied in the order asked, with one thread hop for all their renames and
        unlinks, each file renamed at most once (a claimed message whose flags change
        goes from new/ to its final name in cur/; one expunged goes from its indexed
        name). Issue 16: under a 10-client load each kind queued a pass and a thread
        hop of its own, and the lock was busy most of the time.

        Each flag caller gets the flags its own change left; each removed UID goes to
        the first expunge, in order, whose selection has it; each claim gets the
        messages it moved. When another program renamed or removed a file meanwhile,
        the folder is listed again and what failed is done once more (as
        the folder's ``_set_flags_once`` and ``_expunge_locked`` do, given here as
        ``flags_again`` and ``expunge_again``)."""
        flagged = sorted({u for kind, uids, *_ in batch if kind == FLAGS for u in uids})
        if flagged and self._index().unknown_dates:
            await self._dates.read(flagged)  # the results carry dates: no stat each here
        learn: set[str] = set()
        for kind, _, wanted, mode, _ in batch:
            if kind == FLAGS and mode != "remove":
                learn |= wanted
        if learn:
            await self._kw.learn(learn)
        index = self._index()
        plan: dict[int, tuple[bool, str | None]] = {}  # uid -> (in new/, info part)
        gone: set[int] = set()  # expunged by the pass
        outcome: list[Any] = []  # per request: moved UIDs, {uid: (recent, part)}, victims
        for kind, uids, wanted, mode, _ in batch:
            if kind == CLAIM:
                moved = []
                for uid in uids:
                    i = index.pos(uid)
                    if i < 0 or uid in gone:
                        continue  # expunged meanwhile
                    st = index.state_at(i)
                    recent, part = plan.get(uid, (st.recent, st.part))
                    if recent:  # else another program moved it to cur/ meanwhile
                        plan[uid] = (False, make_info(info_letters(part), in_new=False))
                        moved.append(uid)
                outcome.append(moved)
            elif kind == FLAGS:
                seen: dict[int, tuple[bool, str | None]] = {}
                for uid in uids:
                    i = index.pos(uid)
                    if i < 0 or uid in gone:
                        continue
                    st = index.state_at(i)
                    recent, part = plan.get(uid, (st.recent, st.part))
                    cur = index.table[index.state(part, recent)]
                    new_flags = apply_mode(cur.flags, wanted, mode)
                    if new_flags != cur.flags:
                        part = make_info(self._kw.letters(new_flags, cur.extra), recent)
                        plan[uid] = (recent, part)
                    seen[uid] = (recent, part)
                outcome.append(seen)
            else:
                victims = self._deleted_among(uids, plan, gone)
                gone.update(victims)
                outcome.append(victims)
        renames: list[tuple[str, str]] = []
        moves: list[tuple[int, bool, str | None]] = []
        for uid, (recent, part) in sorted(plan.items()):
            i = index.pos(uid)
            st = index.state_at(i)
            if uid in gone or (recent, part) == (st.recent, st.part):
                continue
            base = index.keys[i]
            renames.append((self._index().relpath_at(i),
                            os.path.join("new" if recent else "cur", filename(base, part))))
            moves.append((uid, recent, part))
        victims_all = sorted(gone)
        ok, missing = await self._rename_and_unlink(renames, victims_all)
        # What was done goes into the index; then what another program got in the way of.
        changed: list[MessageInfo] = []
        missed: set[int] = set()
        for (uid, recent, part), done in zip(moves, ok, strict=True):
            i = index.pos(uid)
            if i < 0:
                continue
            if not done:
                missed.add(uid)
                continue
            old_flags = index.state_at(i).flags
            index.states[i] = index.state(part, recent)
            if index.table[index.states[i]].flags != old_flags:
                changed.append(index.info_at(i))
        self._changed(changed)
        # Each flag caller's messages as its change left them (one expunged later in
        # the pass too: it was there for that change), taken before the removal.
        answers: list[dict[int, MessageInfo]] = []
        for (kind, *_), out in zip(batch, outcome, strict=True):
            if kind != FLAGS:
                continue
            result: dict[int, MessageInfo] = {}
            for uid, (recent, part) in out.items():
                i = index.pos(uid)
                if uid in missed or i < 0:
                    continue
                info = index.info_at(i)
                st = index.state_at(i)
                if (recent, part) != (st.recent, st.part):  # changed by another request
                    info = replace(info, flags=index.table[index.state(part, recent)].flags)
                result[uid] = info
            answers.append(result)
        lost = missing
        present = [u for u in victims_all if u not in lost and u in index]
        freed = sum(index.sizes[index.pos(u)] for u in present)
        self._expunged(present)
        if lost:
            await self._account.charge(-freed, -len(present))  # quota (maildir_quota)
        claimed_uids = {u for kind, uids, *_ in batch if kind == CLAIM for u in uids}
        index.claimed.difference_update(claimed_uids)
        kept: set[int] = set()
        results: list[dict[int, MessageInfo]] = []
        if missed or lost:
            # Another program renamed (flagged) or removed these files meanwhile: learn
            # their names, then apply the changes once more to what is still there (a
            # claim leaves a file the other program moved to it).
            await self._rescan.rescan(True)
            index = self._index()
            if missed:
                redo: list[tuple[list[int], frozenset[str], str]] = []
                for kind, uids, wanted, mode, _ in batch:
                    if kind == FLAGS:
                        redo.append(([u for u in uids if u in missed and u in index],
                                     wanted, mode))
                results = [{} for _ in redo]
                await self._flags_again(redo, results)
            if lost:
                try:
                    again = set(await self._expunge_again({u for u in lost if u in index}))
                finally:
                    self._disk.settled()
                kept = {u for u in lost if u in self._index()} - again
        if gone:
            await self._compact_if_stale()
        get = self._modseq_of
        redone, answered = iter(results), iter(answers)
        removed = gone - kept
        for (kind, _, _, _, waiter), out in zip(batch, outcome, strict=True):
            if kind == CLAIM:
                waiter.callback({u for u in out if u not in missed and u not in gone})
            elif kind == EXPUNGE:
                waiter.callback([u for u in out if u not in kept])
            else:
                result = next(answered)
                if missed:
                    result.update(next(redone))
                waiter.callback([with_modseq(result[u], get(u)) for u in sorted(result)
                                 if u in self._index() or u in removed])

    def _deleted_among(self, among: set[int] | None, plan: dict[int, tuple[bool, str | None]],
                       gone: set[int]) -> list[int]:
        """The UIDs (of ``among``, or all) that are \\Deleted once the pass so far has
        run (``plan``), leaving out those it expunges already (``gone``)."""
        index = self._index()
        table = index.table
        deleted = {sid for sid, st in enumerate(table) if "\\Deleted" in st.flags}
        if among is None:
            found = [uid for uid, sid in zip(index.uids, index.states, strict=True)
                     if sid in deleted and uid not in plan and uid not in gone]
            planned = plan.keys() - gone
        else:
            found = []
            for uid in among:
                i = index.pos(uid)
                if i >= 0 and uid not in plan and uid not in gone \
                        and index.states[i] in deleted:
                    found.append(uid)
            planned = {u for u in among if u in plan and u not in gone}
        found += [u for u in planned
                  if "\\Deleted" in table[index.state(plan[u][1], plan[u][0])].flags]
        return sorted(found)

    async def _rename_and_unlink(self, renames: list[tuple[str, str]], victims: list[int],
                                 ) -> tuple[list[bool], set[int]]:
        """One thread hop under the uidlist lock (see FolderUids.locked): the renames
        (relative paths; done or not, each), then unlinking the files of ``victims``
        under their indexed names (those whose file was not there). Quota is counted in
        the same hop when every victim's file went. A date read on the reactor thread
        meanwhile may find a renamed file under its new name (FolderIndex.date_at).

        With ``INLINE_RENAMES`` (see there), a few renames alone (a
        STORE, a \\Recent claim) are done here, on the reactor thread, when the uidlist
        lock can be had at once: a rename is a directory
        update, like the lock file's create and unlink, with no data I/O and no fsync
        (Dovecot renames in its process too, and fsyncs neither). Issue 16: under the
        10-client load the thread hop held the folder lock 3-5 ms a pass, most of it
        waiting for the busy reactor to take the result back, and every STORE, EXPUNGE
        and claim queued behind it. Unlinks (the blocks a big file frees, and quota's
        maildirsize line) stay in the thread, as does any pass when a thread or
        another program holds the lock."""
        index = self._index()
        rels = [index.relpath_at(index.pos(u)) for u in victims]
        paths = [os.path.join(self._path(), rel) for rel in rels]
        if not renames and not paths:
            return [], set()
        path, locked = self._path(), self._uids.locked
        if not paths and len(renames) <= INLINE_RENAMES:
            done, inline = self._uids.try_locked(rename_all, path, renames)
            if done:
                assert inline is not None
                self._disk.renamed(renames)
                return inline, set()
        moving = index.renaming
        for old, new in renames:
            moving[os.path.basename(old).partition(":")[0]] = new
        self._disk.renaming(renames)
        self._disk.unlinking(rels)
        charge = self._account.charge_in_thread(
            -sum(index.sizes[index.pos(u)] for u in victims), -len(victims)) if victims \
            else None

        def both() -> tuple[list[bool], list[str]]:
            ok = rename_all(path, renames) if renames else []
            return ok, unlink_all(paths) if paths else []

        def work() -> tuple[list[bool], list[str]]:
            ok, missing = locked(both)
            if charge is not None and not missing:
                maildirsize.add_all((charge,))
            return ok, missing

        try:
            ok, missing = await self._run_blocking(work)
        finally:
            moving.clear()  # renames are serialised by the folder lock
            self._disk.settled()
        lost = set(missing)
        return ok, {u for u, p in zip(victims, paths, strict=True) if p in lost}
