"""Greylisting (optional): the first try of a triplet is deferred, a retry passes.

A triplet is (client network, sender, recipient): the client's IPv4 /24 or IPv6
/64, because a sender's pool of servers often retries from a neighbouring address.
The first RCPT of a new triplet gets ``451 4.7.1``; a retry after ``delay`` seconds
passes, and the triplet then passes at once for ``passed_ttl`` seconds after it was
last seen (36 days: monthly newsletters stay known). A triplet never retried is
forgotten after ``pending_ttl`` (a day). Exempt: authenticated clients, the
submission listener, the relay networks, clients a DNSWL vouches for, and the
allowlist (client networks, sender domains, recipients such as ``postmaster@``).

The state is a sqlite3 database under the data directory, used only from one
private thread (``GreylistDB``), never from the reactor. Why sqlite rather than a
JSON-lines log compacted now and then: every decision is a read-modify-write of one
triplet, which sqlite does as one atomic transaction in a crash-safe file (WAL; a
crash loses at most the last decisions, which only means a second greylisting), it
needs no compaction code of ours, it stays correct if several processes share it,
and it is in the standard library. A database that fails (disk full, corrupt) lets
mail through and logs why: greylisting is a delay, never a reason to lose mail.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from typing import Any, cast

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailhost.abuse.networks import Allowlist, IPNetwork, greylist_network, in_networks
from mailhost.message.checks import ClientContext, IEnvelopeCheck
from mailhost.message.stage import Verdict

log = Logger()

DAY = 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triplets (
    network TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    first REAL NOT NULL,
    last REAL NOT NULL,
    passed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (network, sender, recipient)
) WITHOUT ROWID
"""


class GreylistDB:
    """The triplets, in a sqlite3 file used from one private thread.

    ``delay``, ``pending_ttl`` and ``passed_ttl`` in seconds; times are the
    ``clock``'s (so tests drive them with ``twisted.internet.task.Clock``), the
    work runs on ``reactor``'s threads. ``start`` and ``stop`` (or the
    ``GreylistService``) run the thread."""

    def __init__(self, path: str, reactor: Any = None, clock: IReactorTime | None = None,
                 delay: float = 300.0, pending_ttl: float = DAY,
                 passed_ttl: float = 36 * DAY) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.path = path
        self.reactor = reactor
        self.clock = clock if clock is not None else cast(IReactorTime, reactor)
        self.delay = delay
        self.pending_ttl = pending_ttl
        self.passed_ttl = passed_ttl
        self.pool = ThreadPool(minthreads=0, maxthreads=1, name="mailhost-greylist")
        self._db: sqlite3.Connection | None = None  # the pool's thread only

    # -- lifecycle (reactor thread) --------------------------------------------------

    def start(self) -> None:
        self.pool.start()

    def stop(self) -> defer.Deferred[None]:
        """Close the database, then the thread."""
        if not self.pool.started:
            return defer.succeed(None)
        d = self._run(self._close)
        d.addBoth(lambda _: threads.deferToThread(self.pool.stop))
        return d

    def _run(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(self.reactor, self.pool, fn, *args)

    # -- the decisions -------------------------------------------------------------

    def check(self, network: str, sender: str, recipient: str) -> defer.Deferred[float]:
        """Seconds the triplet must still wait (0.0: it passes); records this try."""
        return self._run(self._check, network, sender.lower(), recipient.lower(),
                         self.clock.seconds())

    def purge(self) -> defer.Deferred[int]:
        """Forget expired triplets; fires with how many went."""
        return self._run(self._purge, self.clock.seconds())

    def count(self) -> defer.Deferred[int]:
        return self._run(lambda: int(self._conn().execute(
            "SELECT COUNT(*) FROM triplets").fetchone()[0]))

    # -- in the thread -------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            folder = os.path.dirname(self.path)
            if folder:
                os.makedirs(folder, mode=0o700, exist_ok=True)
            # 0600 from the start (sqlite gives its -wal and -shm files the same mode):
            # who mails whom is private.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(_SCHEMA)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _expired(self, now: float, first: float, last: float, passed: int) -> bool:
        if passed:
            return now - last > self.passed_ttl
        return now - first > self.pending_ttl

    def _check(self, network: str, sender: str, recipient: str, now: float) -> float:
        db = self._conn()
        key = (network, sender, recipient)
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT first, last, passed FROM triplets WHERE network = ? "
                             "AND sender = ? AND recipient = ?", key).fetchone()
            if row is None or self._expired(now, *row):
                db.execute("INSERT OR REPLACE INTO triplets VALUES (?, ?, ?, ?, ?, 0)",
                           (*key, now, now))
                wait = self.delay
            elif row[2] or now - row[0] >= self.delay:
                db.execute("UPDATE triplets SET last = ?, passed = 1 WHERE network = ? "
                           "AND sender = ? AND recipient = ?", (now, *key))
                wait = 0.0
            else:
                db.execute("UPDATE triplets SET last = ? WHERE network = ? AND sender = ? "
                           "AND recipient = ?", (now, *key))
                wait = self.delay - (now - row[0])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return max(wait, 0.0)

    def _purge(self, now: float) -> int:
        db = self._conn()
        cur = db.execute("DELETE FROM triplets WHERE (passed = 1 AND ? - last > ?) "
                         "OR (passed = 0 AND ? - first > ?)",
                         (now, self.passed_ttl, now, self.pending_ttl))
        return cur.rowcount


class GreylistService(service.Service):
    """Runs the database's thread with the host, and purges expired triplets
    hourly (the timer starts here, not at construction)."""

    def __init__(self, db: GreylistDB, interval: float = 3600.0) -> None:
        self.db = db
        self.interval = interval
        self._purger: task.LoopingCall | None = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.db.start()
        self._purger = task.LoopingCall(self._purge)
        self._purger.clock = self.db.clock
        self._purger.start(self.interval, now=True)

    def _purge(self) -> defer.Deferred[None]:
        def done(n: int) -> None:
            if n:
                log.info("greylist: forgot {n} expired triplets", n=n, event="greylist.purge")

        def failed(f: Any) -> None:
            log.failure("greylist: purge failed", f)

        return self.db.purge().addCallbacks(done, failed)

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802
        super().stopService()
        if self._purger is not None and self._purger.running:
            self._purger.stop()
        return self.db.stop()


@implementer(IEnvelopeCheck)
class GreylistCheck:
    """Implements: IEnvelopeCheck (``greylist``), at RCPT."""

    name = "greylist"

    def __init__(self, db: GreylistDB, allowlist: Allowlist = Allowlist(),
                 exempt: Iterable[IPNetwork] = ()) -> None:
        self.db = db
        self.allowlist = allowlist
        self.exempt = tuple(exempt)

    def connect(self, client: ClientContext) -> None:
        pass

    def mail(self, client: ClientContext, sender: str) -> None:
        return None

    def _exempt(self, client: ClientContext, sender: str, recipient: str) -> bool:
        return (client.user is not None or client.submission or client.allowlisted
                or in_networks(client.ip, self.exempt) or self.allowlist.client(client.ip)
                or self.allowlist.sender(sender) or self.allowlist.recipient(recipient))

    def rcpt(self, client: ClientContext, sender: str, recipient: str,
             accepted: int) -> defer.Deferred[Verdict | None] | None:
        if self._exempt(client, sender, recipient):
            return None
        network = greylist_network(client.ip)

        def decided(wait: float) -> Verdict | None:
            if wait <= 0:
                return None
            log.info("greylist: {network} <{sender}> -> <{recipient}>: deferred",
                     network=network, sender=sender, recipient=recipient,
                     event="greylist.deferred")
            return Verdict.tempfail(
                f"<{recipient}>: Recipient address rejected: Greylisted, "
                f"please try again in {int(wait + 0.999)} seconds", code=451, status="4.7.1")

        def failed(f: Any) -> None:
            log.error("greylist: database {path} failed ({error}); mail let through",
                      path=self.db.path, error=str(f.value), event="greylist.error")
            return None

        return self.db.check(network, sender, recipient).addCallbacks(decided, failed)


__all__ = ["GreylistCheck", "GreylistDB", "GreylistService"]
