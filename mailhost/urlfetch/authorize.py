"""RFC 4467's rules for an authorized URL: the INTERNAL token, expiry, access identifiers.

The INTERNAL mechanism is the server's own (RFC 4467 2.4.1: at least 128 bits, hex):
here HMAC-SHA-256 under the mailbox access key (``mailhost.urlfetch.keys``) of the URL
rump (RFC 4467 2.5: the URL up to and including ``;URLAUTH=<access>``) as
``ImapUrl.format`` writes it, so every spelling of the same URL (case, percent-escapes)
verifies alike.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac

from mailhost.urlfetch.imapurl import ImapUrl
from mailhost.urlfetch.interfaces import IMAP_SESSION, SUBMISSION

MECHANISM = "INTERNAL"


def token(key: bytes, url: ImapUrl) -> str:
    """The INTERNAL token of ``url`` (its mechanism and token left out: the rump)."""
    rump = url.format(with_authorization=False).encode("utf-8")
    return hmac.new(key, rump, hashlib.sha256).hexdigest()


def verifies(key: bytes, url: ImapUrl) -> bool:
    """The URL carries the INTERNAL token ``key`` gives its rump (constant time)."""
    return (url.mechanism == MECHANISM and bool(url.token)
            and hmac.compare_digest(token(key, url), url.token or ""))


def expired(url: ImapUrl, now: datetime.datetime | None = None) -> bool:
    """``;EXPIRE=`` is past (RFC 4467 3: the URL is invalid from then on)."""
    if url.expire is None:
        return False
    when = datetime.datetime.fromisoformat(url.expire.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when <= (now or datetime.datetime.now(datetime.UTC))


def access_allows(access: str, requester: str, role: str) -> bool:
    """RFC 4467 2.3 (with RFC 4468 for ``submit+``): may ``requester``, fetching as
    ``role``, use a URL whose access identifier is ``access``?

    - ``anonymous``: any session (ours are all authenticated);
    - ``authuser``: any authenticated user of this server;
    - ``user+<id>``: only an IMAP session logged in as ``<id>``;
    - ``submit+<id>``: only a submission server acting for ``<id>`` (BURL after AUTH
      as ``<id>``), never an IMAP session.
    """
    low = access.lower()
    me = requester.lower()
    if low in ("anonymous", "authuser"):
        return True
    if low.startswith("user+"):
        return role == IMAP_SESSION and low[5:] == me
    if low.startswith("submit+"):
        return role == SUBMISSION and low[7:] == me
    return False


def valid_access(access: str) -> bool:
    """A well-formed access identifier (RFC 4467 9: ``submit+``/``user+`` need an id)."""
    low = access.lower()
    if low in ("anonymous", "authuser"):
        return True
    return any(low.startswith(p) and len(low) > len(p) for p in ("submit+", "user+"))
