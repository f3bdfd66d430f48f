"""Log output formats: twistd's text log, or one JSON object per line.

Every event mailhost emits carries stable fields (``event``, ``user``, ``client`` ...)
through ``twisted.logger``; the JSON format exposes them to log shippers as-is.

The text format is twistd's own, line for line, but made cheaper: twistd formats
each event with ``string.Formatter`` (pure Python) and converts the timestamp through
a time zone object every time, which cost a busy SMTP listener about a tenth of its
CPU for one line per message. Here the message goes through ``str.format_map`` and
the timestamp is reused within a second; anything unusual (a traceback, call syntax
in the format) takes Twisted's own path.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    PredicateResult,
    formatEventAsClassicLogText,
    formatTime,
    jsonFileLogObserver,
)

_twistd_options: Any = None


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
    """``observer`` without the DNS client's per-query lines."""
    return FilteringLogObserver(observer, [drop_dns_client_noise])


def json_observer() -> ILogObserver:
    """A twistd ``--logger`` factory: JSON lines on standard output."""
    return quiet(jsonFileLogObserver(sys.stdout))


def text_observer() -> ILogObserver:
    """A twistd ``--logger`` factory: twistd's text log (same file choice, same lines)."""
    from twisted.scripts.twistd import _SomeApplicationRunner

    observer = _SomeApplicationRunner.loggerFactory(_twistd_options or {})._getLogObserver()
    if isinstance(observer, FileLogObserver):
        observer.formatEvent = ClassicTextFormat()
    return quiet(observer)


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


def install_log_format(fmt: str, twistd_options: Any = None) -> None:
    """Select the log format for a twistd run (``twistd_options`` is ServerOptions).

    Leaves twistd alone if the admin chose a ``--logger`` or ``--syslog`` of their own.
    """
    global _twistd_options
    if twistd_options is None or twistd_options.get("logger") or twistd_options.get("syslog"):
        return
    _twistd_options = twistd_options
    # twistd resolves it with namedAny after all options are parsed.
    twistd_options["logger"] = ("mailhost.logs.json_observer" if fmt == "json"
                                else "mailhost.logs.text_observer")
