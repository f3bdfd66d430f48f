"""A read/delete/release view over stored mail, for the test host, capture mode and the web UI.

Protocols serve one logged-in user; this view serves the operator of a test or dev
server, across every mailbox at once. It is a seam (``IMailView``) so the web UI and
the test helpers never reach into a store implementation.
"""

from mailhost.mailview.interfaces import IMailView, MessageQuery, MessageSummary, NoSuchMessageId
from mailhost.mailview.release import ReleaseFailed
from mailhost.mailview.view import StoreMailView

__all__ = ["IMailView", "MessageQuery", "MessageSummary", "NoSuchMessageId", "ReleaseFailed",
           "StoreMailView"]
