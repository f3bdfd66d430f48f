"""The web UI and REST API of a test or development mail host (like Mailpit's).

Off unless ``[web] listen`` is set. One twisted.web resource (``resource.WebRoot``)
serves a static page (``static/``: HTML, JS and CSS, no build step) and the REST API
(``api.Api``, described by ``openapi.py`` at ``/api/openapi.json``) that the page uses
and that test suites in any language can use too: mailboxes, messages with search and
paging, headers, text and sandboxed HTML bodies, raw source, attachments, delete,
purge, release to an SMTP server, the outbound queue, scripted faults, and server-sent
events when mail arrives. The data comes from an ``IMailView``; the queue and the
faults through the two small interfaces of ``interfaces.py``. ``service.py`` (the
composition root) builds it from ``WebSettings``.
"""

from mailhost.web.interfaces import IFaultControl, IQueueListing, QueuedMessage, QueuedRecipient
from mailhost.web.settings import WebSettings

__all__ = ["IFaultControl", "IQueueListing", "QueuedMessage", "QueuedRecipient", "WebSettings"]
