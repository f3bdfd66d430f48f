"""DiskWatch: what a listened-to Maildir folder makes of the watcher's events.

The store's ChangeWatcher (maildir_watch) reports each name that appears in or
vanishes from a folder's new/ and cur/ (inotify), or "something may have changed"
(polling, a lost watch). Most of those events are the folder's own doing: its
deliveries, COPYs, flag renames and expunges. This class keeps what tells ours from
another program's, and decides what a batch of events needs:

- nothing, when the index already accounts for every name (``_explained``);
- following another program's renames and unlinks from the events alone
  (maildir_events.fold_events), with no listing;
- a rescan (the folder's), when the events do not say for sure.

Its state: the watch mode, the events not looked at yet and their coalescing timer,
the names our renames made (``own``) and the names our renames and unlinks in flight
are taking away (``leaving``). The folder tells it of those through ``renaming``,
``renamed``, ``unlinking`` and ``settled``; the index, the folder lock, the rescan and
applying a diff stay the folder's, reached through the callables it is built with.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mailhost.store._maildir.maildir_events import fold_events
from mailhost.store._maildir.maildir_index import FolderIndex
from mailhost.store._maildir.maildir_names import info_letters
from mailhost.store._maildir.maildir_rescan import FolderRescan
from mailhost.store._maildir.maildir_watch import APPEARED, COALESCE_DELAY
from mailhost.store.interfaces import NoSuchFolder

#: (subdir, file name, inotify mask) of one change, or None: "something may have
#: changed".
Event = tuple[str, str, int] | None


class DiskWatch:
    """The watch bookkeeping of one MaildirFolder (see the module docstring).

    Built with: ``reactor`` (the coalescing timer); ``watch``, ``unwatch`` and
    ``drain`` (the store's ChangeWatcher's start, stop and drain, for this folder);
    ``run`` (runs a coroutine function under the folder lock, failing with
    NoSuchFolder once the folder is gone); ``rescan`` (the folder's FolderRescan: a
    listing, others' changes applied, UIDNEXT read, all with the lock held);
    ``index`` (the folder's current index); ``pending`` (the base names being linked
    in by us right now, which no event about them can be foreign); ``path`` (for the
    log)."""

    log = Logger()

    def __init__(self, reactor: IReactorTime, watch: Callable[[], str],
                 unwatch: Callable[[], None], drain: Callable[[], None],
                 run: Callable[..., defer.Deferred[Any]], rescan: FolderRescan,
                 index: Callable[[], FolderIndex], pending: Container[str],
                 path: Callable[[], str]) -> None:
        self._reactor = reactor
        self._watch = watch
        self._unwatch = unwatch
        self._drain = drain
        self._run = run
        self._rescan = rescan
        self._index = index
        self._pending = pending
        self._path = path
        self.mode: str | None = None  # "inotify" or "poll" while watched
        self._events: list[Event] = []  # not yet looked at
        self._call: IDelayedCall | None = None
        self._own: set[tuple[str, str]] = set()  # (subdir, name) our renames made
        self._leaving: set[tuple[str, str]] = set()  # names our rename/unlink in flight drops
        self._removed: set[str] = set()  # bases that left the index since the last look
        #: Runs of events applied without a listing (a test hook).
        self.followed = 0

    # -- watching ------------------------------------------------------------------------

    def start(self) -> None:
        """Have the watcher report changes (the folder has a listener); a first
        rescan covers what changed before the watch began."""
        if self.mode is None:
            self.mode = self._watch()
            self.event(None)

    def moved(self, mode: str) -> None:
        """The watcher now watches this folder another way (its inotify watch broke)."""
        if self.mode is not None:
            self.mode = mode

    def stop(self) -> None:
        """No more reports (no listener left, the folder is going); events not looked
        at yet are dropped."""
        if self.mode is not None:
            self.mode = None
            self._unwatch()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._events.clear()
        self._own.clear()
        self._removed.clear()

    # -- our own changes in flight ---------------------------------------------------------

    def renaming(self, renames: Sequence[tuple[str, str]]) -> None:
        """Renames of ours (relative paths) about to run in a thread: the names they
        pass through, so the watch's events for them cost no rescan (see
        ``_explained``); the names they leave, so a NOOP meanwhile need not wait on the
        lock for them (``nothing_foreign``)."""
        if self.mode == "inotify":
            self._own.update(os.path.split(new) for _, new in renames)
            self._leaving.update(os.path.split(old) for old, _ in renames)

    def renamed(self, renames: Sequence[tuple[str, str]]) -> None:
        """Renames of ours done already (on the reactor thread): the watch's events
        for them cost no rescan."""
        if self.mode == "inotify":
            self._own.update(os.path.split(new) for _, new in renames)

    def unlinking(self, rels: Sequence[str]) -> None:
        """Unlinks of ours (relative paths) about to run in a thread (see
        ``nothing_foreign``)."""
        if self.mode == "inotify":
            self._leaving.update(os.path.split(rel) for rel in rels)

    def settled(self) -> None:
        """The renames and unlinks in flight are done (and in the index)."""
        self._leaving.clear()

    def removed(self, bases: Iterable[str]) -> None:
        """These bases left the index (our expunges): the watch may still report their
        files, and those are no arrivals (``_arrivals``). Only the inotify watch needs
        telling."""
        self._removed.update(bases)

    # -- events --------------------------------------------------------------------------

    def event(self, event: Event) -> None:
        """From the watcher: (subdir, name, inotify mask) of a change to new/ or cur/,
        or None for "something may have changed". Collected for COALESCE_DELAY, then
        looked at under the folder lock (``sync``)."""
        if self.mode is None:
            return
        self._events.append(event)
        if self._call is None:
            self._call = self._reactor.callLater(COALESCE_DELAY, self._flush)

    def _flush(self) -> None:
        self._call = None
        d = self._run(self.sync)
        d.addErrback(lambda f: None if f.check(NoSuchFolder)
                     else self.log.failure("rescanning {path} failed", f, path=self._path()))

    def nothing_foreign(self) -> bool:
        """Whether every change the watch has reported so far is one of ours, so a
        refresh has nothing to apply and need not queue for the folder lock behind
        other sessions' STOREs and EXPUNGEs (issue 16: under a 10-client load an IMAP
        NOOP waited 18 ms on average for the lock, to find nothing). A STORE rename or
        EXPUNGE unlink of ours still in its thread hop counts as ours (``_leaving``);
        other changes of ours in flight may still look foreign here, and then the
        refresh takes the lock as before. The events stay queued for the usual flush,
        which looks at them exactly, under the lock."""
        self._drain()  # what the kernel holds counts too
        events = self._events
        if not events:
            return True
        if None in events:
            return False
        final = {(e[0], e[1]): e[2] for e in events if e is not None}  # none is None
        return all(self._explained(sub, name, mask, self._own, self._leaving)
                   for (sub, name), mask in final.items()
                   ) and not self._arrivals(events, self._removed)

    async def sync(self) -> None:
        """Rescan if the collected events show a change the index does not know of
        (runs under the lock, so every change of ours is in the index by now)."""
        if self.mode == "inotify":
            self._drain()  # events already queued in the kernel
        events, self._events = self._events, []
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        own, self._own = self._own, set()
        if not events:
            return
        if None in events:
            await self._rescan.rescan(False)
            return
        # Only the last event of each name counts: a file of ours created and then
        # renamed (delivered, then claimed into cur/), or a flag set, cleared and set
        # again, left nothing the index does not know.
        final = {(e[0], e[1]): e[2] for e in events if e is not None}  # none is None
        removed, self._removed = self._removed, set()
        if not all(self._explained(sub, name, mask, own)
                   for (sub, name), mask in final.items()) or self._arrivals(events, removed):
            await self._follow(events, removed)

    def _arrivals(self, events: list[Event], removed: set[str]) -> bool:
        """Whether another program added a file the index never had, even if it went
        again before we looked: it may have given it a UID, and UIDNEXT must move
        (RFC 3501 2.3.1.1). ``removed``: bases we took out of the index since the last
        look (our expunges), whose events are no arrivals."""
        by_base, pending = self._index().by_base, self._pending
        for e in events:
            if e is not None and e[2] & APPEARED:
                base = e[1].partition(":")[0]
                if base not in by_base and base not in pending and base not in removed:
                    return True
        return False

    async def _follow(self, events: list[Event], removed: set[str]) -> None:
        """Apply another program's renames and unlinks as the events tell them
        (maildir_events), or rescan when they do not say for sure."""
        index = self._index()

        def current(base: str) -> tuple[str, str | None] | None:
            uid = index.by_base.get(base)
            i = -1 if uid is None else index.pos(uid)
            if i < 0:
                return None
            st = index.state_at(i)
            return ("new" if st.recent else "cur"), st.part

        folded = fold_events(((e[0], e[1], bool(e[2] & APPEARED))
                              for e in events if e is not None),
                             current, self._pending)
        renamed: list[tuple[int, bool, str | None]] = []
        if folded is not None:
            for base, sub, name in folded.moved:
                _, sep, part = name.partition(":")
                info = part if sep else None
                _, unmapped = index.keywords.flags_of(info_letters(info))
                if any("a" <= c <= "z" for c in unmapped):
                    # A keyword letter we have no keyword for: dovecot-keywords may
                    # have a new one (a rescan reads it first).
                    folded = None
                    break
                renamed.append((index.by_base[base], sub == "new", info))
        if folded is None:
            await self._rescan.rescan(True)
            return
        self.followed += 1
        if self._arrivals(events, removed):
            await self._rescan.read_uid_next()
        await self._rescan.apply(renamed, [index.by_base[b] for b in folded.gone],
                                 folded.unknown)

    def _explained(self, sub: str, name: str, mask: int, own: set[tuple[str, str]],
                   leaving: set[tuple[str, str]] | None = None) -> bool:
        """Whether the index already accounts for a file appearing (``mask`` has
        APPEARED) or vanishing in new/ or cur/: our own delivery, COPY or adoption in
        flight, a rename or expunge of ours. Another program's change always leaves a
        name the index does not have, or removes the name it has. ``leaving``: the old
        names a rename or unlink of ours still in flight is taking away (only the
        lock-free look of ``nothing_foreign`` passes them: under the lock the index
        already says what became of them)."""
        base, sep, part = name.partition(":")
        if base in self._pending:
            return True  # being delivered, copied or adopted
        index = self._index()
        uid = index.by_base.get(base)
        i = -1 if uid is None else index.pos(uid)
        appeared = bool(mask & APPEARED)
        if i < 0:
            return not appeared  # a file we never had (or expunged) went away
        st = index.state_at(i)
        current = ("new" if st.recent else "cur") == sub and st.part == (part if sep
                                                                          else None)
        if appeared:
            return current or (sub, name) in own
        # An old name of ours went away, or one our STORE/EXPUNGE in flight drops.
        return not current or (leaving is not None and (sub, name) in leaving)
