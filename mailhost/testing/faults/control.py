"""``FaultScript``: the fault list of one host as the web UI's ``IFaultControl``.

The host keeps one list of ``Fault``s that its ``FaultHook`` reads; this adds to it
through ``FaultSet`` (so a fault from the page gets the same defaults as one from
``host.smtp.fail``) and clears it in place, so the hook sees every change at once.
"""

from __future__ import annotations

from zope.interface import implementer

from mailhost.testing.faults.registry import Fault, FaultSet
from mailhost.web.interfaces import FaultError, IFaultControl

PROTOCOLS = ("smtp", "pop3", "imap")
ACTIONS = ("fail", "delay", "drop_after")


@implementer(IFaultControl)
class FaultScript:
    """Implements: IFaultControl over a host's list of faults."""

    def __init__(self, registry: list[Fault]) -> None:
        self.registry = registry

    def faults(self) -> list[Fault]:
        return list(self.registry)

    def add(self, protocol: str, action: str, command: str, *, code: int | None = None,
            message: str | None = None, match: str | None = None, times: int | None = 1,
            seconds: float = 0.0) -> Fault:
        if protocol not in PROTOCOLS:
            raise FaultError(f"protocol must be one of {', '.join(PROTOCOLS)}")
        if action not in ACTIONS:
            raise FaultError(f"action must be one of {', '.join(ACTIONS)}")
        command = command.strip()
        if not command or len(command) > 64 or not command.replace(" ", "").isalnum():
            raise FaultError("command must be a command verb such as MAIL or greeting")
        if times is not None and times < 1:
            raise FaultError("times must be at least 1 (or null for always)")
        if code is not None and not 400 <= code <= 599:
            raise FaultError("code must be between 400 and 599")
        if not 0 <= seconds <= 3600:
            raise FaultError("seconds must be between 0 and 3600")
        if message is not None and ("\r" in message or "\n" in message):
            raise FaultError("message must be one line")
        faults = FaultSet(protocol, self.registry)
        if action == "fail":
            return faults.fail(command, code, message, match, times)
        if action == "delay":
            return faults.delay(command, seconds, match, times)
        return faults.drop_after(command, match, times)

    def clear(self) -> int:
        count = len(self.registry)
        self.registry[:] = []
        return count
