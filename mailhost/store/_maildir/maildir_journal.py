"""ModSeqJournal: the reactor side of a folder's ``mailhost-modseq`` journal.

ModSeqListeners numbers each change (RFC 7162) and hands it to ``record``; the lines
wait ``JOURNAL_DELAY`` for others to share their write, which runs in a thread under
the folder's file lock, in order (maildir_modseq holds the file format and the thread
functions). Numbers never pass the last reservation on disk: when the counter gets
half way to it a new ``R`` line is written at once. Appends that outgrow the state
they describe are replaced by the state, written whole.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mailhost.store._maildir import maildir_modseq
from mailhost.store._maildir.maildir_index import FolderIndex
from mailhost.store.modes import FileModes
from mailhost.store.modseq import ModSeqs

#: Modseq journal lines wait this long for others to share their write.
JOURNAL_DELAY = 1.0
#: Appended lines beyond twice the folder's size plus this make the next write a
#: whole one (the slack MaildirFolder's COMPACT_MIN_STALE gives its other files).
COMPACT_SLACK = 1000


class ModSeqJournal:
    """Writes one MaildirFolder's modseq journal (see the module docstring).

    Built with: ``reactor`` (the write timer), ``run_blocking`` (the store's thread
    helper), ``file_lock`` (the folder's lock over its files in threads), ``index``,
    ``modseqs``, ``path`` and ``validity`` (the folder's current index, mod-sequences,
    directory and UIDVALIDITY), ``modes`` and ``fsync`` (the store's), and ``gone``
    (whether the folder was deleted: nothing more is written)."""

    log = Logger()

    def __init__(self, reactor: IReactorTime,
                 run_blocking: Callable[..., defer.Deferred[Any]],
                 file_lock: threading.Lock, index: Callable[[], FolderIndex],
                 modseqs: Callable[[], ModSeqs], path: Callable[[], str],
                 validity: Callable[[], int], modes: FileModes, fsync: bool,
                 gone: Callable[[], bool]) -> None:
        self._reactor = reactor
        self._run_blocking = run_blocking
        self._file_lock = file_lock
        self._index = index
        self._modseqs = modseqs
        self._path = path
        self._validity = validity
        self._modes = modes
        self._fsync = fsync
        self._gone = gone
        self.reserved = 0  # modseqs up to here are reserved on disk (maildir_modseq)
        self._lines: list[str] = []
        self._call: IDelayedCall | None = None
        self._lock = defer.DeferredLock()  # appends land in order
        self._appended = 0  # lines since the journal was last written whole

    def record(self, kind: str, uids: Sequence[int], modseq: int) -> None:
        """Record a numbered change for the next journal write; a reservation runs
        out at half way, and then the write (with its fsync) starts at once."""
        if self._gone():
            return
        if kind == "set":
            index = self._index()
            items = [(u, index.letters_at(i)) for u in uids if (i := index.pos(u)) >= 0]
            if items:
                self._lines.append(maildir_modseq.set_line(modseq, items))
        else:
            self._lines.append(maildir_modseq.gone_line(modseq, uids))
        # (With a modseq clock every restart starts above the time: nothing to reserve.)
        if (self._modseqs().clock is None
                and modseq + maildir_modseq.RESERVE // 2 > self.reserved):
            self.reserved = modseq + maildir_modseq.RESERVE
            self._lines.append(maildir_modseq.reserve_line(self.reserved))
            self.write()
        elif self._call is None:
            self._call = self._reactor.callLater(JOURNAL_DELAY, self.write)

    def write(self, closing: bool = False) -> defer.Deferred[None]:
        """Write the lines recorded so far (``closing``: and the clean-close line);
        fires once they, and every write started before, have landed."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        lines, self._lines = self._lines, []
        mods = self._modseqs()
        if closing:
            lines.append(f"C {mods.highest}\n")
        if not lines or self._gone():
            # Fires once the writes already started have landed.
            return self._lock.run(defer.succeed, None)
        path, lock, modes, fsync = self._path(), self._file_lock, self._modes, self._fsync
        self._appended += len(lines)
        index = self._index()
        if self._appended > 2 * len(index) + COMPACT_SLACK:
            # Appends outgrew the state they describe: write it whole instead
            # (a snapshot, taken here on the reactor thread).
            self._appended = 0
            args = (path, self._validity(), self.reserved, maildir_modseq.snapshot(mods),
                    dict(zip(index.uids, index.letters(), strict=True)), modes, fsync)

            def work() -> None:
                with lock:
                    maildir_modseq.compact(*args)
                    if closing:
                        maildir_modseq.append(path, lines[-1:], modes, fsync)
        else:
            def work() -> None:
                with lock:
                    maildir_modseq.append(path, lines, modes, fsync)

        d = self._lock.run(self._run_blocking, work)
        d.addErrback(lambda f: self.log.failure("modseq journal write failed", f))
        return d

    def forget(self) -> None:
        """The folder was deleted: nothing recorded is written."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._lines.clear()
