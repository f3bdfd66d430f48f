"""How new files of a Maildir folder get their UIDs into its index.

Every UID is given out in a worker thread under ``dovecot-uidlist.lock``
(maildir_uids.FolderUids), by the thread that linked the files, and handed to the
index in ascending order: ``UidHandOver.settle`` makes a UID visible only once every
lower handed UID has settled, so no session ever sees a UID lower than one it has
already seen appear later. While a file is being linked in by us its base name is
``expect``-ed: a rescan meanwhile leaves it to the thread that numbers it.

SMTP deliveries answer once the file is durable in new/, and are numbered afterwards
(``DeliveryNumbering``), in batches: collected for ``NUMBER_DELAY``, and while a batch
is in its thread the next one collects, so N deliveries cost about one lock, read,
append and uidlist fsync, not N. IDLE hears of them when their batch settles. A
refresh (SELECT, NOOP, a POP3 login) first has the batches already due run at once
and waits for them (``numbered_all``), so a client that got the 250 and then looks
finds the message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mailhost.groupsync import GroupSync
from mailhost.store._maildir.maildir_index import FolderIndex
from mailhost.store._maildir.maildir_uids import FolderUids
from mailhost.store.interfaces import MessageInfo

#: Deliveries wait this long for others to share their UID batch (a refresh, close or
#: anyone who needs the UIDs starts the batch at once). Each batch costs a dotlock
#: round and a uidlist fsync; one SMTP session sends a message every few ms.
NUMBER_DELAY = 0.05

#: What a settled reservation adds to the index:
#: (base name, in new/, info part, needs CRLF wrap, CRLF size, internal date).
Row = tuple[str, bool, str | None, bool, int, float]


class UidHandOver:
    """The UIDs threads handed out for one MaildirFolder, on their way into its index
    (see the module docstring).

    Built with: ``uids`` (the folder's FolderUids, whose ``handed`` queue orders the
    hand-over and whose ``found`` holds other programs' messages numbered with
    ours); ``seen(uid)`` (a UID exists: the folder's UIDNEXT moves past it, before
    anyone is told); ``insert(uid, row)`` (index a settled row); ``added(infos)``
    (tell listeners); ``gone`` (whether the folder was deleted: rows are dropped)."""

    def __init__(self, uids: FolderUids, seen: Callable[[int], None],
                 insert: Callable[[int, Row], MessageInfo],
                 added: Callable[[list[MessageInfo]], None],
                 gone: Callable[[], bool]) -> None:
        self._uids = uids
        self._seen = seen
        self._insert = insert
        self._added = added
        self._gone = gone
        self._settled: dict[int, Row | None] = {}
        self._waiting: dict[int, list[defer.Deferred[None]]] = {}
        #: Base names being linked in by us (a count each: two callers may expect one).
        self.pending: Counter[str] = Counter()

    def expect(self, bases: Iterable[str]) -> None:
        """These files are being linked in by us: a refresh meanwhile must not adopt
        them (they get their UIDs from the thread that links them)."""
        self.pending.update(bases)

    def unexpect(self, bases: Iterable[str]) -> None:
        pending = self.pending
        pending.subtract(bases)
        for base in bases:
            if pending[base] <= 0:
                del pending[base]

    def settle(self, items: Sequence[tuple[int, Row | None]]) -> defer.Deferred[None]:
        """Record the outcome of UIDs a thread handed out (None: dropped). Fires once
        each is visible or dropped; listeners hear of each visible batch at once. UIDs
        become visible in the order they were handed out (``FolderUids.handed``), so
        only those still waiting behind an earlier one get a Deferred (adopting 100k
        files at once must not build 100k of them).

        Other programs' messages handed out with ours (``FolderUids.found``) settle
        here too, first. A UID handed out once may be brought again by the caller
        that owns its file (its file was numbered before it asked): a UID already
        settled is left as it is, and a dropped outcome never replaces a row."""
        uids = self._uids
        settled = self._settled
        found = uids.found
        while found:
            uid, row = found.popleft()
            if row is not None or uid not in settled:
                settled[uid] = row
        for uid, row in items:
            self._seen(uid)
            head = uids.peek()
            if head is None or uid < head:
                continue  # settled already (the queue is ascending)
            if row is not None or settled.get(uid) is None:
                settled[uid] = row
        added: list[MessageInfo] = []
        fire: list[defer.Deferred[None]] = []
        handed = uids.handed
        while True:
            done = uids.peek()
            if done is None or done not in settled:
                break
            row = settled.pop(done)
            if row is not None and not self._gone():
                added.append(self._insert(done, row))
            # Only now: a thread that finds it gone from the queue finds it indexed.
            handed.popleft()
            fire.extend(self._waiting.pop(done, ()))
        self._added(added)
        waits: list[defer.Deferred[None]] = []
        for uid, _row in items:
            if uid in settled:  # behind a handed UID that has not settled yet
                # A list: one UID may have two callers waiting (see above).
                d: defer.Deferred[None] = defer.Deferred()
                self._waiting.setdefault(uid, []).append(d)
                waits.append(d)
        for waiter in fire:
            waiter.callback(None)
        if not waits:
            return defer.succeed(None)
        return defer.gatherResults(waits).addCallback(lambda _: None)


class DeliveryNumbering:
    """The batches that number one MaildirFolder's SMTP deliveries (see the module
    docstring).

    Built with: ``reactor`` (the batch timer), ``run_blocking`` (the store's thread
    helper), ``syncer`` (the store's current GroupSync, if any), ``uids`` (the
    folder's FolderUids), ``handover`` (the folder's UidHandOver), ``index`` (the
    folder's current index), ``relist`` (a failed batch: the folder's next rescan must
    list, not trust its directory times), ``gone`` and ``path`` (for the log)."""

    log = Logger()

    def __init__(self, reactor: IReactorTime,
                 run_blocking: Callable[..., defer.Deferred[Any]],
                 syncer: Callable[[], GroupSync | None], uids: FolderUids,
                 handover: UidHandOver, index: Callable[[], FolderIndex],
                 relist: Callable[[], None], gone: Callable[[], bool],
                 path: Callable[[], str]) -> None:
        self._reactor = reactor
        self._run_blocking = run_blocking
        self._syncer = syncer
        self._uids = uids
        self._handover = handover
        self._index = index
        self._relist = relist
        self._gone = gone
        self._path = path
        self._unnumbered: list[Row] = []  # delivered, durable, waiting for a UID batch
        self._numbering = False  # a batch is scheduled or running
        self._call: IDelayedCall | None = None  # the scheduled start of the next batch
        self._queued = 0  # rows ever queued for numbering
        self._numbered = 0  # of those, how many are done (numbered, or failed)
        self._waiters: list[tuple[int, defer.Deferred[None]]] = []
        #: UID batches run (a test and benchmark hook).
        self.batches = 0

    @property
    def done(self) -> bool:
        """Whether every delivery queued so far is numbered (or its batch failed)."""
        return self._numbered >= self._queued

    def delivered(self, rows: Sequence[Row], expected: bool) -> None:
        """Files just made durable in new/ with no UID yet: numbered in the next
        batch. ``expected``: the writer ``expect``-ed them before linking (the folder
        was open then); else a listing may have adopted them already, and those are
        left out."""
        handover = self._handover
        if self._gone():
            if expected:
                handover.unexpect([r[0] for r in rows])
            return
        if not expected:
            by_base, pending = self._index().by_base, handover.pending
            rows = [r for r in rows if r[0] not in by_base and r[0] not in pending]
            handover.expect([r[0] for r in rows])
        if not rows:
            return
        self._unnumbered.extend(rows)
        self._queued += len(rows)
        if not self._numbering:
            self._numbering = True
            self._call = self._reactor.callLater(NUMBER_DELAY, self._start)

    def numbered_all(self) -> defer.Deferred[None]:
        """Fires once every delivery queued so far is numbered (or its batch failed)."""
        if self._numbered >= self._queued:
            return defer.succeed(None)
        if self._call is not None and self._call.active():
            self._call.reset(0)  # someone waits: no point collecting more
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((self._queued, d))
        return d

    def forget(self) -> None:
        """The folder was deleted: nothing more is numbered, and every waiter fires."""
        self._unnumbered.clear()
        self._numbered = self._queued
        self._wake()
        if self._call is not None and self._call.active():
            self._call.cancel()
            self._call = None
            self._numbering = False

    def _start(self) -> None:
        self._call = None
        d = defer.Deferred.fromCoroutine(self._batches())
        d.addErrback(lambda f: self.log.failure("numbering deliveries failed", f))

    async def _batches(self) -> None:
        try:
            while self._unnumbered and not self._gone():
                batch, self._unnumbered = self._unnumbered, []
                try:
                    await self._number(batch)
                except Exception:
                    # The files stay in new/ (durable); the next listing adopts them.
                    self._relist()
                    self.log.failure("giving UIDs to {n} delivered messages in {path} "
                                     "failed; the next rescan will", n=len(batch),
                                     path=self._path())
                self._numbered += len(batch)
                self._wake()
        finally:
            self._numbering = False
            if self._gone():
                self._unnumbered.clear()
                self._numbered = self._queued
                self._wake()

    async def _number(self, batch: list[Row]) -> None:
        """One batch: one dotlock round (lock, read what others appended, append,
        release) and one uidlist fsync in a thread, then visible, in UID order."""
        self.batches += 1
        bases = [row[0] for row in batch]
        uids, handover = self._uids, self._handover
        ticket: list[int] = []
        syncer = self._syncer()
        facts = [(date, size, wrap) for _, _, _, wrap, size, date in batch]

        def work() -> list[int]:
            got = uids.assign(bases, ticket, facts)
            if syncer is not None:
                syncer.sync([uids.uidlist.path])
            return got

        try:
            try:
                got = await self._run_blocking(work)
            except BaseException:
                handover.settle([(uid, None) for uid in ticket])
                raise
            await handover.settle(list(zip(got, batch, strict=True)))
        finally:
            handover.unexpect(bases)

    def _wake(self) -> None:
        done = self._numbered
        ready = [d for target, d in self._waiters if target <= done]
        if ready:
            self._waiters = [(t, d) for t, d in self._waiters if t > done]
            for d in ready:
                d.callback(None)
