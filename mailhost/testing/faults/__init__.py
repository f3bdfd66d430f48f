"""Fault injection for the test mail host: scripted replies, delays and dropped connections.

A ``FaultFactory`` (a ``WrappingFactory``) sits around each listener's real factory,
inside any implicit-TLS layer, so it sees plaintext client command lines before the
real protocol does and server output before the client does. It knows just enough of
each protocol's framing to keep message bodies from being read as commands: SMTP DATA
(entered when the server answers 354), SMTP BDAT chunks (the octets counted on the
BDAT line, which the client sends without waiting for a reply), IMAP literals (``{n}``
and ``{n+}``), POP3 multi-line responses, and SASL/IDLE continuation lines.

A failed command is answered by the wrapper and never reaches the real protocol. So
that replies stay in order under pipelining, the wrapper first waits until the real
protocol has answered everything it was given before. Commands after which the
protocol's framing may change (DATA, STARTTLS, AUTH, IDLE, synchronizing literals)
are barriers: later input waits until the server has answered them, exactly as a
conforming client waits.

The package has one module per idea: ``registry`` (``Fault``, ``FaultSet`` and
matching), ``interceptor`` (the protocol-neutral per-connection base), ``smtp``,
``pop3`` and ``imap`` (each protocol's framing) and ``factory`` (``FaultFactory`` and
``make_wrapper``, which put the interceptors on the listeners). The names below are
re-exported so that ``from mailhost.testing.faults import X`` keeps working.
"""

from mailhost.testing.faults.factory import FaultFactory, make_wrapper
from mailhost.testing.faults.imap import IMAPFaultProtocol
from mailhost.testing.faults.interceptor import MAX_LINE
from mailhost.testing.faults.pop3 import POP3FaultProtocol
from mailhost.testing.faults.registry import AUTH_COMMANDS, GREETING, Fault, FaultSet
from mailhost.testing.faults.smtp import SMTPFaultProtocol

__all__ = [
    "AUTH_COMMANDS",
    "GREETING",
    "MAX_LINE",
    "Fault",
    "FaultFactory",
    "FaultSet",
    "IMAPFaultProtocol",
    "POP3FaultProtocol",
    "SMTPFaultProtocol",
    "make_wrapper",
]
