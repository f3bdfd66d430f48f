"""A small table every node keeps in memory and reloads when it changes anywhere.

Users and aliases are asked synchronously (SMTP looks up every recipient), so a node
reads the whole table once and again, in a thread, whenever the table's trigger sends
``NOTIFY <channel>`` (an admin command on any machine, or psql) or the LISTEN
connection was lost (``None``: changes may have been missed). Reloads run one at a
time; a change heard during one asks for one more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import psycopg
from twisted.internet import threads
from twisted.logger import Logger

from mailhost.db.database import error_line
from mailhost.db.notify import NotifyListener

log = Logger()

T = TypeVar("T")


class TableMirror(Generic[T]):
    """``value`` is ``read(dsn)``, kept current (see the module)."""

    def __init__(self, dsn: str, read: Callable[[str], T], channel: str, what: str) -> None:
        self.dsn = dsn
        self._read = read
        self._channel = channel
        self._what = what
        self.value: T = read(dsn)
        self._listener: NotifyListener | None = None
        self._reloading = False
        self._again = False

    def reload_now(self) -> T:
        """Read again at once, blocking (after the admin command's own edit)."""
        self.value = self._read(self.dsn)
        return self.value

    def changed(self, payload: str | None) -> None:
        if self._reloading:
            self._again = True
            return
        self._reloading = True
        self._again = False
        d = threads.deferToThread(self._read, self.dsn)

        def loaded(value: T) -> None:
            self.value = value

        def done(_: Any) -> None:
            self._reloading = False
            if self._again:
                self.changed(None)

        d.addCallback(loaded)
        d.addErrback(lambda f: log.warn("reading the {what} table failed: {e}", what=self._what,
                                        e=f.getErrorMessage(), event=f"pg_{self._what}_reload"))
        d.addBoth(done)

    def start_listening(self, reactor: Any) -> None:
        if self._listener is None:
            self._listener = NotifyListener(self.dsn, self.changed, reactor,
                                            channel=self._channel)
            self._listener.start()

    def stop_listening(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None


def opened(make: Callable[[str], T], dsn: str, table: str) -> T:
    """``make(dsn)``, or a one-line ConfigError naming ``table`` if it cannot be read."""
    from mailhost.config import ConfigError

    try:
        return make(dsn)
    except psycopg.errors.UndefinedTable:
        raise ConfigError(f"auth.dsn: the database has no {table} table; run "
                          "'mailhost db upgrade'") from None
    except psycopg.Error as e:
        raise ConfigError(f"auth.dsn: cannot read the {table} table: {error_line(e)}") from None
