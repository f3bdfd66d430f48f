"""An in-process SMTP+POP3+IMAP mail host for tests (like GreenMail for Java).

``MailHost`` is the Twisted API (Deferreds); ``running()`` gives a blocking
``SyncMailHost`` for code without Twisted; ``trial.MailHostTestMixin`` and
``unittest.SyncMailHostTestMixin`` give a host per test; the pytest fixtures
``mailhost``/``mailhost_sync`` (and their ``_class``, ``_module`` and ``_session``
scopes) wrap them. ``ownership`` keeps one driver of the reactor at a time and raises
``ReactorInThisThread`` or ``ReactorConflict``, naming the fix, where a combination
cannot work. See docs/testing.md.
"""

from mailhost.testing.faults import Fault, FaultSet
from mailhost.testing.host import MailHost, MailHostTimeout, OutboundMessage, ReceivedMessage
from mailhost.testing.ownership import ReactorConflict, ReactorInThisThread
from mailhost.testing.threaded import SyncMailHost, running

__all__ = [
    "Fault",
    "FaultSet",
    "MailHost",
    "MailHostTimeout",
    "OutboundMessage",
    "ReactorConflict",
    "ReactorInThisThread",
    "ReceivedMessage",
    "SyncMailHost",
    "running",
]
