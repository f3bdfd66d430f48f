"""Wrapping the listeners: the factory that puts the right interceptor on each connection.

``make_wrapper`` is the ``wrap_factory`` hook ``MailHost`` hands to ``makeService``;
it places a ``FaultFactory`` inside any implicit-TLS layer so faults see plaintext.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IProtocolFactory
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

from mailhost.testing.faults.imap import IMAPFaultProtocol
from mailhost.testing.faults.pop3 import POP3FaultProtocol
from mailhost.testing.faults.registry import Fault
from mailhost.testing.faults.smtp import SMTPFaultProtocol

_DIALECTS = {"smtp": SMTPFaultProtocol, "submission": SMTPFaultProtocol,
             "pop3": POP3FaultProtocol, "imap": IMAPFaultProtocol}


class FaultFactory(WrappingFactory):
    """Wraps one listener's factory with the interceptor for its protocol."""

    def __init__(self, kind: str, wrapped: IProtocolFactory, registry: list[Fault],
                 clock: Any) -> None:
        super().__init__(wrapped)
        self.kind = kind
        self.protocol = _DIALECTS[kind]
        self.registry = registry
        self.clock = clock
        self._empty_waiters: list[defer.Deferred] = []

    def drop_connections(self) -> None:
        """Abort every open connection (``MailHost.reset`` and ``stop``)."""
        for proto in list(self.protocols):
            proto.transport.abortConnection()

    def wait_empty(self) -> defer.Deferred:
        """Deferred firing once no connection of this listener is open."""
        if not self.protocols:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._empty_waiters.append(d)
        return d

    def unregisterProtocol(self, p: Any) -> None:  # noqa: N802
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._empty_waiters = self._empty_waiters, []
            for d in waiters:
                d.callback(None)


def make_wrapper(registry: list[Fault], clock: Any,
                 made: list[FaultFactory]) -> Callable[[str, IProtocolFactory], IProtocolFactory]:
    """A ``wrap_factory`` for ``makeService``: fault injection inside implicit TLS."""

    def wrap(kind: str, factory: IProtocolFactory) -> IProtocolFactory:
        if isinstance(factory, TLSMemoryBIOFactory):
            # Go inside the TLS layer so the interceptor sees plaintext.
            inner = FaultFactory(kind, factory.wrappedFactory, registry, clock)
            made.append(inner)
            factory.wrappedFactory = inner
            return factory
        outer = FaultFactory(kind, factory, registry, clock)
        made.append(outer)
        return outer

    return wrap
