"""Log output formats: twistd's text log, or one JSON object per line.

Every event mailhost emits carries stable fields (``event``, ``user``, ``client`` ...)
through ``twisted.logger``; the JSON format exposes them to log shippers as-is.

The text format is twistd's own, line for line, but made cheaper: twistd formats
each event with ``string.Formatter`` (pure Python) and converts the timestamp through
a time zone object every time, which cost a busy SMTP listener about a tenth of its
CPU for one line per message. Here the message goes through ``str.format_map`` and
the timestamp is reused within a second; anything unusual (a traceback, call syntax
in the format) takes Twisted's own path.

Logs cannot fill the disk: twistd's own log file rotates at 1 MB and keeps every
rotated file (a reconnect storm once left 145 of them in 30 s), so the text log file
is opened here with ``server.log_max_bytes`` and ``server.log_max_files``; and
``RepeatLimiter`` lets through only a few identical warnings or errors a minute,
then says how many it held back.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from collections import OrderedDict
from typing import IO, Any, cast

from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    PredicateResult,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    jsonFileLogObserver,
)
from twisted.python.compat import ioType
from twisted.python.logfile import LogFile
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

_twistd_options: Any = None
#: The stream this process's observer writes to (``text_observer``/``json_observer``).
_output: IO[Any] | None = None
# (rotate at bytes, rotated files kept; 0 = all), from server.log_max_*.
_rotation: tuple[int, int] = (10_000_000, 10)


# What twisted.names' client logs for every query it sends: it binds a fresh UDP port
# per query (source-port randomisation) and udp.Port logs its start and close
# unconditionally, the protocol its start and stop. Four lines per MX, A or AAAA
# lookup, so several per relay attempt, and none says anything an admin can act on.
# Only the two protocol lines honour ``noisy``, and the resolver builds that protocol
# itself, so short of overriding its private ``_connectedProtocol`` a filter is the
# public way to drop all four. mailhost opens no other UDP port.
_DNS_CLIENT_NOISE = re.compile(
    r"DNSDatagramProtocol starting on \d+"
    r"|\(UDP Port \d+ Closed\)"
    r"|(?:Starting|Stopping) protocol <twisted\.names\.dns\.DNSDatagramProtocol object at \w+>"
)


def drop_dns_client_noise(event: dict[str, Any]) -> PredicateResult:
    """Log filter predicate: no for the per-query lines of the DNS client."""
    message = event.get("message")
    if (event.get("log_namespace") == "log_legacy" and isinstance(message, tuple)
            and len(message) == 1 and isinstance(message[0], str)
            and _DNS_CLIENT_NOISE.fullmatch(message[0])):
        return PredicateResult.no
    return PredicateResult.maybe


def quiet(observer: ILogObserver) -> ILogObserver:
    """``observer`` without the DNS client's per-query lines, and with repeated
    identical warnings and errors held back (``RepeatLimiter``)."""
    # A plain callable is a predicate (ILogFilterPredicate has only __call__).
    return FilteringLogObserver(RepeatLimiter(observer),
                                [drop_dns_client_noise])  # type: ignore[list-item]


def json_observer() -> ILogObserver:
    """A twistd ``--logger`` factory: JSON lines on standard output."""
    global _output
    _output = sys.stdout
    return quiet(TurnFlushedObserver(sys.stdout, jsonFileLogObserver(sys.stdout).formatEvent))


def text_observer() -> ILogObserver:
    """A twistd ``--logger`` factory: twistd's text log, in the file twistd would
    choose (``--logfile``; standard output with ``-n`` and no file), rotated within
    bounds."""
    global _output
    _output = _log_file(_twistd_options or {})
    return quiet(TurnFlushedObserver(_output, ClassicTextFormat()))


def log_output() -> IO[Any] | None:
    """Where this process's log goes: standard output, the rotated ``--logfile``, or
    None when twistd logs its own way (``--syslog``, an admin's ``--logger``). The
    supervisor of ``server.workers`` writes its workers' lines there too."""
    return _output


def _log_file(options: Any) -> IO[Any]:
    name = options.get("logfile")
    if name == "-" or (not name and options.get("nodaemon")):
        return sys.stdout
    max_bytes, max_files = _rotation
    f = LogFile.fromFullPath(
        name or "twistd.log",
        rotateLength=max(max_bytes, 65536),
        maxRotatedFiles=max_files or None,
    )
    if not signal.getsignal(signal.SIGUSR1):
        # As twistd does: SIGUSR1 rotates (for logrotate's postrotate).
        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            cast(IReactorFromThreads, reactor).callFromThread(f.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return f


@implementer(ILogObserver)
class RepeatLimiter:
    """Passes at most ``burst`` identical warnings or errors (same namespace and
    text) per ``interval`` seconds to ``observer``; when one recurs after its window,
    a line says how many were held back. Info and debug events always pass."""

    def __init__(self, observer: ILogObserver, burst: int = 5, interval: float = 60.0,
                 max_keys: int = 1000) -> None:
        self.observer = observer
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        # key -> [window start, count in window]
        self._seen: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level is None or level < LogLevel.warn:
            self.observer(event)
            return
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += f" {failure.type.__name__}: {failure.getErrorMessage()}"
        key = (str(event.get("log_namespace", "")), text)
        now = event.get("log_time") or 0.0
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.interval:
            held = int(entry[1]) - self.burst if entry is not None else 0
            if held > 0:
                self.observer({
                    "log_format": "(the next message was repeated {held} more times in "
                                  "{seconds:.0f} s and not logged)",
                    "held": held, "seconds": now - entry[0],  # type: ignore[index]
                    "log_level": level, "log_time": now,
                    "log_namespace": event.get("log_namespace"),
                    "log_system": event.get("log_system"),
                })
            self._seen[key] = [now, 1]
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
            self.observer(event)
            return
        entry[1] += 1
        if entry[1] <= self.burst:
            self.observer(event)


@implementer(ILogObserver)
class TurnFlushedObserver:
    """``FileLogObserver`` that writes the lines of one reactor turn with one write.

    Twisted's observer writes and flushes every line at once: a system call per event
    on the reactor thread (twistd's log file is unbuffered, standard output is flushed),
    which for one line per SMTP message was about 3 % of a busy listener's reactor time
    (issue 18). Here a line logged on the running reactor's thread waits for the end of
    the reactor turn (``callLater(0)``), and every line of that turn goes out in one
    write; once the reactor stops (a shutdown trigger), or before it runs, lines are
    written at once, after any still waiting. A worker thread's line is written at
    once, so it may come before reactor lines of the same turn. A ``kill -9`` can
    lose the lines of the turn it interrupts, no more.

    The reactor's side takes no lock: twistd logs from its signal handlers ("Received
    SIGTERM"), which run on the reactor thread between any two bytecodes, also in the
    middle of a write here. So the waiting list is only appended to and swapped, never
    cleared, and writes hold a reentrant lock (against worker threads).
    """

    def __init__(self, out: IO[Any], format_event: Any) -> None:
        self._out = out
        self._format = format_event
        self._encode = ioType(out) is not str
        self._write_lock = threading.RLock()
        self._waiting: list[str] = []  # reactor thread only
        self._scheduled = False  # a drain is due this turn (reactor thread only)
        self._at_shutdown = False  # the shutdown trigger that drains is added
        self._reactor: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        text = self._format(event)
        if not text:
            return
        if isInIOThread():  # type: ignore[no-untyped-call]
            reactor = self._reactor
            if reactor is None:  # the one installed by now: it runs on this thread
                from twisted.internet import reactor as installed

                reactor = self._reactor = installed
            if reactor.running:
                self._waiting.append(text)
                if not self._scheduled:
                    self._scheduled = True
                    reactor.callLater(0, self._turn_ended)
                    if not self._at_shutdown:
                        self._at_shutdown = True
                        reactor.addSystemEventTrigger("after", "shutdown", self.drain)
                return
            self.drain()  # what waits goes first
        self._emit(text)

    def _turn_ended(self) -> None:
        self._scheduled = False
        self.drain()

    def drain(self) -> None:
        """Write the lines waiting for the end of the reactor turn (reactor thread)."""
        waiting = self._waiting
        if not waiting:
            return
        # Swap, then join: a line a signal handler appends in between lands in one of
        # the two lists, and neither is lost.
        self._waiting = []
        self._emit("".join(waiting))

    def _emit(self, text: str) -> None:
        with self._write_lock:
            self._out.write(text.encode("utf-8") if self._encode else text)  # type: ignore[arg-type]
            self._out.flush()


class ClassicTextFormat:
    """``formatEventAsClassicLogText`` with a fast path for plain events."""

    def __init__(self) -> None:
        # (second, text) in one attribute: a worker thread that logs reads both or neither.
        self._stamp: tuple[int, str] = (-1, "-")

    def __call__(self, event: dict[str, Any]) -> str | None:
        fmt = event.get("log_format")
        when = event.get("log_time")
        if type(fmt) is not str or "log_failure" in event or when is None:
            return formatEventAsClassicLogText(event)
        try:
            text = fmt.format_map(event)
        except Exception:  # noqa: BLE001 - "{call()}" syntax, missing keys: Twisted's path
            return formatEventAsClassicLogText(event)
        if not text:
            return None
        second = int(when)
        cached = self._stamp
        if cached[0] != second:
            cached = self._stamp = (second, formatTime(when))
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
        return f"{cached[1]} [{system}] {text}".replace("\n", "\n\t") + "\n"


def install_log_format(fmt: str, twistd_options: Any = None, max_bytes: int = 10_000_000,
                       max_files: int = 10) -> None:
    """Select the log format for a twistd run (``twistd_options`` is ServerOptions),
    and the log file's rotation (``server.log_max_bytes``, ``server.log_max_files``).

    Leaves twistd alone if the admin chose a ``--logger`` or ``--syslog`` of their own.
    """
    global _twistd_options, _rotation
    if twistd_options is None or twistd_options.get("logger") or twistd_options.get("syslog"):
        return
    _twistd_options = twistd_options
    _rotation = (max_bytes, max_files)
    # twistd resolves it with namedAny after all options are parsed.
    twistd_options["logger"] = ("mailhost.logs.json_observer" if fmt == "json"
                                else "mailhost.logs.text_observer")
