"""A ProtocolWrapper that takes on its transport's interfaces cheaply.

Twisted's ``ProtocolWrapper.makeConnection`` calls ``directlyProvides`` on every
connection so the wrapped protocol still sees ``ISSLTransport`` and the like through
the wrapper. Building that declaration costs more than the rest of the wrapper, yet
it depends only on the wrapper's class and the transport's declaration, so it is
built once per pair and shared by every connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import providedBy
from zope.interface.declarations import Provides

_MAX_DECLARATIONS = 256
_declarations: dict[tuple[type, Any], Any] = {}


class InterfaceCopyingWrapper(ProtocolWrapper):
    """``ProtocolWrapper`` with ``makeConnection``'s declaration cached."""

    def makeConnection(self, transport: Any) -> None:  # noqa: N802 (Twisted hook)
        key = (type(self), providedBy(transport))
        declaration = _declarations.get(key)
        if declaration is None:
            if len(_declarations) >= _MAX_DECLARATIONS:
                _declarations.clear()  # per-instance transport declarations: stay bounded
            declaration = _declarations[key] = Provides(*key)
        self.__provides__ = declaration
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        # A wrapper is its protocol's transport (the stubs do not say ProtocolWrapper is one).
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]
