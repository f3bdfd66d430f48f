"""The driver seam: psycopg 3 with its connection pool, run in a thread pool of our own.

Why threads and not psycopg's non-blocking connection driven by the reactor: psycopg's
asynchronous API is written for asyncio (``AsyncConnection`` needs an asyncio loop, and
the generators that drive libpq are psycopg internals), while mailhost runs the plain
epoll reactor. A blocking connection in a bounded pool of threads is psycopg's
best-tested path, keeps the pool's health checks and reconnection, and never blocks
the reactor: every query runs through ``Database.run`` (``deferToThreadPool``), one
transaction per call. The thread pool is exactly as large as the connection pool, so
a thread never waits for a connection, and database work cannot starve the reactor's
own thread pool (fsync, big reads) or be starved by it.

Prepared statements: every connection prepares each statement on its first use
(``prepare_threshold=0``), so the few statements the store issues are parsed and
planned once per connection.

A database that cannot be reached (refused, cut, no connection within ``timeout``)
raises ``unavailable`` (``DatabaseUnavailable`` unless the caller names its own, as the
store does with ``StoreUnavailable``), so protocols answer with a temporary error and
log one line, not a traceback.

Coming back: the pool replaces lost connections in the background with a backoff that
doubles after each failure, up to ``reconnect_timeout`` (psycopg-pool's default, five
minutes, would leave a node trying only every minute or two after a long outage, so
a database back for a minute could still see none of it). ``RECONNECT`` ends each
attempt's backoff after a few seconds; the next transaction that needs a connection
starts a new attempt at once, so a node finds the database again within seconds of
its return however long it was away.

Health checks: a connection taken from the pool is checked with an empty query only
if it has been idle more than ``CHECK_IDLE`` seconds, or the server has written to it
since its last use (a restart tells each connection "terminating connection"; without
the check its first transaction would fail); one used a moment ago with nothing to
read goes straight to work. Checking every one cost a round trip and
about a fifth of each transaction's CPU in the node (measured under the IMAP load).

Deadlocks and serialization failures (two nodes locking folders in opposite orders
in spite of our id ordering, say) are retried a bounded number of times.
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors
from psycopg_pool import ConnectionPool, PoolTimeout
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

_T = TypeVar("_T")

#: Attempts of one transaction that fails with a deadlock or serialization failure.
RETRIES = 3

Work = Callable[..., _T]


def error_line(e: BaseException) -> str:
    """The first line of a database error, for a one-line message (its type's name when
    it says nothing)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


#: Seconds a transaction waits for a connection before the database counts as down.
TIMEOUT = 5.0
#: Seconds a pooled connection may have been idle and still skip the health check.
CHECK_IDLE = 1.0
#: Seconds one reconnection attempt (with its backoff: 1, 2, 4 s) lasts before it
#: gives up, and a transaction that needs a connection starts another.
RECONNECT = 8.0


def _input_waiting(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection has something to read (one poll, no round trip)."""
    try:
        return bool(select.select([conn.fileno()], [], [], 0)[0])
    except (OSError, ValueError, psycopg.Error):
        return True


class DatabaseUnavailable(ConnectionError):
    """The database cannot be reached now."""


_pool_log = Logger(namespace="mailhost.db.pool")


class _PoolLog(logging.Handler):
    """psycopg-pool's own messages (a failed reconnection, a connection given up) into
    the mail host's log, one line each, instead of Python's last-resort handler
    writing them to stderr (which twistd logs as errors)."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().strip().splitlines()
        _pool_log.warn("{message}", message=text[0] if text else "", event="db_pool")


def _route_pool_log() -> None:
    pool_log = logging.getLogger("psycopg.pool")
    if not any(isinstance(h, _PoolLog) for h in pool_log.handlers):
        pool_log.addHandler(_PoolLog(logging.WARNING))
        pool_log.setLevel(logging.WARNING)
        pool_log.propagate = False


class Database:
    """A pool of connections to one PostgreSQL database and the threads that use them.

    ``run(fn, *args)`` calls ``fn(conn, *args)`` in a pool thread inside one
    transaction (committed when ``fn`` returns, rolled back when it raises) and
    returns a Deferred of its result.
    """

    def __init__(self, dsn: str, *, max_size: int = 8, reactor: IReactorThreads | None = None,
                 name: str = "mailhost-db", timeout: float = TIMEOUT,
                 unavailable: Callable[[str], Exception] = DatabaseUnavailable) -> None:
        if reactor is None:
            from twisted.internet import reactor as default

            reactor = default  # type: ignore[assignment]
        self.dsn = dsn
        self._reactor = reactor
        _route_pool_log()
        self._pool = ConnectionPool(dsn, min_size=1, max_size=max_size, open=False,
                                    kwargs={"prepare_threshold": 0}, name=name,
                                    timeout=timeout, reconnect_timeout=RECONNECT,
                                    check=self._check)
        self._last_used: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
            weakref.WeakKeyDictionary())
        self._threads = ThreadPool(minthreads=0, maxthreads=max_size, name=name)
        self._running = False
        self._unavailable = unavailable

    def start(self) -> None:
        """Open the pool (connections are made in the background) and the threads."""
        if not self._running:
            self._running = True
            self._pool.open(wait=False)
            self._threads.start()

    def _check(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's check of a connection it hands out: only one idle a while, or one
        the server has written to while it sat in the pool (a restart's "terminating
        connection" arrives that way a moment after the connection's last use)."""
        if (time.monotonic() - self._last_used.get(conn, 0.0) > CHECK_IDLE
                or _input_waiting(conn)):
            ConnectionPool.check_connection(conn)

    def transact(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(conn, *args)`` in one transaction, here, blocking: for code already in a
        thread (a message body read by a reader's thread)."""
        return self._attempt(False, fn, args)

    def statement(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(conn, *args)`` for an ``fn`` that runs one statement (a read: a folder's
        sync, a body chunk), which is its own transaction: no BEGIN and COMMIT around
        it, two round trips fewer (about a third of such a read's CPU in the node)."""
        return self._attempt(True, fn, args)

    def _attempt(self, single: bool, fn: Callable[..., _T], args: tuple[Any, ...]) -> _T:
        for attempt in range(RETRIES):
            try:
                with self._pool.connection() as conn:
                    if single:
                        conn.autocommit = True
                        try:
                            result = fn(conn, *args)
                        finally:
                            with contextlib.suppress(psycopg.Error):
                                conn.autocommit = False
                    else:
                        with conn.transaction():
                            result = fn(conn, *args)
                    self._last_used[conn] = time.monotonic()
                    return result
            except (errors.DeadlockDetected, errors.SerializationFailure):
                if attempt == RETRIES - 1:
                    raise
            except (psycopg.OperationalError, PoolTimeout) as e:
                raise self._unavailable(f"database unavailable: {type(e).__name__}: "
                                        f"{error_line(e)}") from e
        raise AssertionError("unreachable")

    def run(self, fn: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
        """``transact(fn, *args)`` in a database thread: the reactor never waits."""
        return threads.deferToThreadPool(self._reactor, self._threads,  # type: ignore[arg-type]
                                         self.transact, fn, *args)

    def run_statement(self, fn: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
        """``statement(fn, *args)`` in a database thread."""
        return threads.deferToThreadPool(self._reactor, self._threads,  # type: ignore[arg-type]
                                         self.statement, fn, *args)

    def hop(self, fn: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
        """``fn(*args)`` in a database thread, no transaction (a message reader's thread
        hop: its reads take a connection themselves)."""
        return threads.deferToThreadPool(self._reactor, self._threads,  # type: ignore[arg-type]
                                         fn, *args)

    def close(self) -> defer.Deferred[None]:
        """Close every connection and stop the threads (off the reactor thread: closing
        waits for connections in use)."""
        if not self._running:
            return defer.succeed(None)
        self._running = False
        d = threads.deferToThread(self._pool.close)

        def stop_threads(result: object) -> object:
            self._threads.stop()
            return result

        d.addBoth(stop_threads)
        return d


def connect(dsn: str) -> psycopg.Connection[Any]:
    """One plain blocking connection (the admin command, the schema check at start)."""
    return psycopg.connect(dsn)
