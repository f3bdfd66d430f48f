"""The seam between a protocol and URL resolution: ``IUrlFetcher``."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

#: Who fetches: an IMAP session (URLFETCH), or a submission server acting for the user
#: it authenticated (BURL). RFC 4467 2.3: ``user+<id>`` URLs are for IMAP sessions of
#: that user, ``submit+<id>`` URLs for a submission entity acting for that user.
IMAP_SESSION = "imap"
SUBMISSION = "submit"


class IFetchedPart(Interface):
    """The octets an IMAP URL names (a message, a section, a ``;PARTIAL=`` range),
    streamed from the store's message reader in bounded chunks."""

    size = Attribute("Octets in all.")

    def read() -> Deferred[bytes]:
        """Deferred firing with the next chunk, ``b""`` at the end."""

    def close() -> None:
        """Release the reader (always called, also after an error)."""


class IUrlFetcher(Interface):
    """Resolves URLAUTH-authorized IMAP URLs (RFC 4467 6) of this server's store."""

    def fetch(text: str, requester: str, role: str) -> Deferred[IFetchedPart | None]:
        """Deferred firing with the part ``text`` names when ``requester`` (the
        authenticated user) acting as ``role`` may have it, else None. None says
        nothing of why (RFC 4467 7: URLFETCH answers NIL "for any reason"). A URL
        without URLAUTH is resolved only for ``SUBMISSION`` and only in the
        requester's own mailboxes (RFC 4468 3.2's trusted case, as Dovecot has it)."""
