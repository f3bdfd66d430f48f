"""An in-process SMTP+POP3+IMAP mail host for tests (like GreenMail for Java).

``MailHost`` is the Twisted API (Deferreds); ``running()`` gives a blocking
``SyncMailHost`` for code without Twisted; ``trial.MailHostTestMixin`` and the pytest
fixtures ``mailhost``, ``mailhost_session`` and ``mailhost_sync`` wrap them.
See docs/testing.md.
"""

from mailhost.testing.faults import Fault, FaultSet
from mailhost.testing.host import MailHost, MailHostTimeout, OutboundMessage, ReceivedMessage
from mailhost.testing.threaded import SyncMailHost, running

__all__ = [
    "Fault",
    "FaultSet",
    "MailHost",
    "MailHostTimeout",
    "OutboundMessage",
    "ReceivedMessage",
    "SyncMailHost",
    "running",
]
