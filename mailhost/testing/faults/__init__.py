"""Fault injection for the test mail host: scripted replies, delays and dropped connections.

Faults are applied inside the protocols, not beside them: every SMTP, POP3 and IMAP
session asks its host's dispatch hook before it runs a command or sends its greeting
(``mailhost.sessions``), and ``FaultHook`` answers from the host's fault script. So a
fault sees exactly the commands the server runs (over TLS too), never a line of a
DATA body, a BDAT chunk or an IMAP literal, and never parses the wire itself.

``registry`` holds ``Fault``, ``FaultSet`` (the per-protocol API, ``host.smtp.fail``)
and matching; ``hook`` holds ``FaultHook``.
"""

from mailhost.testing.faults.hook import FaultHook
from mailhost.testing.faults.registry import AUTH_COMMANDS, GREETING, Fault, FaultSet

__all__ = [
    "AUTH_COMMANDS",
    "GREETING",
    "Fault",
    "FaultHook",
    "FaultSet",
]
