"""Change notification across nodes: PostgreSQL ``LISTEN``/``NOTIFY``.

A writer sends ``pg_notify(CHANNEL, '<folder id>')`` inside its transaction, so the
notification goes out exactly when the change commits. Each node keeps one extra
connection that listens, in a thread of its own (it waits on the socket; the reactor
never does), and hands each payload to the reactor thread. When that connection is
lost, the node reconnects and reports ``None``: "notifications may have been
missed", on which the store resynchronises every open folder.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
from twisted.application import service
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger

log = Logger()

CHANNEL = "mailhost_store"


class NotifyListener:
    """One LISTEN connection and its thread; ``callback(payload | None)`` runs on the
    reactor thread."""

    def __init__(self, dsn: str, callback: Callable[[str | None], None],
                 reactor: IReactorFromThreads, channel: str = CHANNEL) -> None:
        self._dsn = dsn
        self._callback = callback
        self._reactor = reactor
        self._channel = channel
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mailhost-db-listen",
                                            daemon=True)
            self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """True once the first LISTEN is in place (for callers that must not miss one)."""
        return self._ready.wait(timeout)

    def stop(self) -> None:
        """Ask the thread to end; it notices within half a second."""
        self._stopping.set()

    def _loop(self) -> None:
        first = True
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True) as conn:
                    conn.execute(f'LISTEN "{self._channel}"')
                    self._ready.set()
                    if not first:
                        self._reactor.callFromThread(self._callback, None)
                    first = False
                    while not self._stopping.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._reactor.callFromThread(self._callback, note.payload)
            except psycopg.Error as e:
                if self._stopping.is_set():
                    break
                log.warn("database notifications lost ({error}); reconnecting",
                         error=str(e).strip(), event="db_listen_lost")
                first = False
                self._stopping.wait(1.0)


class ListeningService(service.Service):
    """Runs ``start()`` and ``stop()`` with the mail host: keeps a node's cache of a
    table (the users) current while the node runs."""

    def __init__(self, start: Callable[[], None], stop: Callable[[], None]) -> None:
        self._start = start
        self._stop = stop

    def startService(self) -> None:
        super().startService()
        self._start()

    def stopService(self) -> object:
        self._stop()
        return super().stopService()
