"""Log output formats: twistd's text log, or one JSON object per line.

Every event mailhost emits carries stable fields (``event``, ``user``, ``client`` ...)
through ``twisted.logger``; the JSON format exposes them to log shippers as-is.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_observer() -> ILogObserver:
    """A twistd ``--logger`` factory: JSON lines on standard output."""
    return jsonFileLogObserver(sys.stdout)


def install_log_format(fmt: str, twistd_options: Any = None) -> None:
    """Select the log format for a twistd run (``twistd_options`` is ServerOptions)."""
    if fmt == "json" and twistd_options is not None:
        # twistd resolves it with namedAny after all options are parsed.
        twistd_options["logger"] = "mailhost.logs.json_observer"
