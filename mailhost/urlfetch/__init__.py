"""IMAP URLs with URLAUTH (RFC 4467, 5092, 5550), resolved for any protocol.

IMAP's GENURLAUTH/URLFETCH (``mailhost.imap.urlauth``) and SMTP's BURL (RFC 4468,
``mailhost.smtp.burl``) share what lives here, so neither protocol imports the other
(DESIGN.md): the URL syntax (``imapurl``), the mailbox access keys (``keys``), the
INTERNAL token and access-identifier rules (``authorize``), and ``IUrlFetcher``, the
seam through which a protocol asks for the octets an authorized URL names
(``fetcher.UrlAuthFetcher``; service.py builds one over the store and gives it to the
IMAP and submission listeners).
"""

from mailhost.urlfetch.interfaces import IMAP_SESSION, SUBMISSION, IFetchedPart, IUrlFetcher

__all__ = ["IMAP_SESSION", "SUBMISSION", "IFetchedPart", "IUrlFetcher"]
