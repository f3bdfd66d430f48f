"""The fault script applied: the dispatch hook every session of a test host asks first.

Each protocol asks its host's ``SessionRegistry`` before it runs a command (and before
its greeting), and the registry asks this hook (``mailhost.sessions.IDispatchHook``).
The protocols know their own framing, so nothing here reads the wire: a DATA body, a
BDAT chunk or an IMAP literal is never taken for a command, and replies stay in order
under pipelining because a held command holds its session.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.logger import Logger
from zope.interface import implementer

from mailhost.sessions import CUT, IDispatchHook, Refuse
from mailhost.testing.faults.registry import Fault, _find

# The namespace the injected-fault debug lines always had, kept for log filters.
log = Logger(namespace="mailhost.testing.faults")


@implementer(IDispatchHook)
class FaultHook:
    """Implements: IDispatchHook over a host's list of scripted ``Fault``s.

    A delay holds the command (or the greeting) for its seconds and then looks again
    for a ``fail`` or ``drop_after``, so a delayed command can still fail.
    """

    def __init__(self, registry: list[Fault], clock: Any) -> None:
        self.registry = registry
        self.clock = clock

    def dispatch(self, session: Any, verb: str, line: str) -> Any:
        protocol = "smtp" if session.protocol == "submission" else session.protocol
        fault = _find(self.registry, protocol, verb, line)
        if fault is None:
            return None
        if fault.action == "delay":
            fault.hits += 1
            return task.deferLater(self.clock, fault.seconds, self._after_delay,
                                   protocol, verb, line)
        return self._apply(fault)

    def _after_delay(self, protocol: str, verb: str, line: str) -> Any:
        fault = _find(self.registry, protocol, verb, line, ("fail", "drop_after"))
        return None if fault is None else self._apply(fault)

    def _apply(self, fault: Fault) -> Any:
        fault.hits += 1
        log.debug("injected {fault}", fault=fault.describe())
        if fault.action == "fail":
            return Refuse(fault.code, fault.message)
        return CUT
