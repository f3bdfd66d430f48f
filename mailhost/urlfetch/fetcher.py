"""``UrlAuthFetcher``: URLAUTH-authorized IMAP URLs resolved against the store.

One object serves IMAP's URLFETCH and SMTP's BURL alike (service.py builds it). RFC 4467
7: "URLFETCH effectively executes with the access of the userid in the server component
of the URL", so the URL's owner's account is opened, whoever asks; what the requester
may have is the access identifier's business (``authorize.access_allows``). Order of
the checks: syntax, expiry, access identifier, then the owner's keys (a user who never
made a URLAUTH key has no URL to verify, and no account is opened for a name that is
no user's), the folder's key and the token, and only then the message and section.

What a URL names inside a message (``;SECTION=``, ``;PARTIAL=``) is IMAP's BODY[]
semantics, so that step is handed in (``resolve_part``: ``mailhost.imap.catenate.
open_url``), as the store's ``open_account`` is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from mailhost.store.interfaces import IFolder, IMailAccount, MessageInfo, NoSuchFolder
from mailhost.urlfetch import authorize, imapurl
from mailhost.urlfetch.interfaces import SUBMISSION, IFetchedPart, IUrlFetcher
from mailhost.urlfetch.keys import keys_in

#: ``(folder, message, (start, end) range or the bytes)`` of a URL in an account.
Resolved = tuple[IFolder, MessageInfo, "tuple[int, int] | bytes"]
ResolvePart = Callable[[IMailAccount, imapurl.ImapUrl], Awaitable[Resolved]]


@implementer(IFetchedPart)
class FetchedPart:
    """Implements: IFetchedPart, over a byte range of a stored message (or bytes)."""

    def __init__(self, folder: IFolder, info: MessageInfo, got: tuple[int, int] | bytes) -> None:
        self._folder, self._info, self._got = folder, info, got
        self._reader: Any = None
        self._done = False
        if isinstance(got, bytes):
            self.size = len(got)
        else:
            self.size = max(0, got[1] - got[0])

    async def _read(self) -> bytes:
        if self._done:
            return b""
        if isinstance(self._got, bytes):
            self._done = True
            return self._got
        if self._reader is None:
            if self.size == 0:
                self._done = True
                return b""
            start = self._got[0]
            self._reader = await self._folder.read_message(self._info.uid, start, self.size)
        chunk: bytes = await self._reader.read()
        if not chunk:
            self._done = True
        return chunk

    def read(self) -> defer.Deferred[bytes]:
        return defer.Deferred.fromCoroutine(self._read())

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


@implementer(IUrlFetcher)
class UrlAuthFetcher:
    """Implements: IUrlFetcher, over ``open_account`` (the store's, or a session's own
    account only) and the keys in ``key_dir``."""

    def __init__(self, open_account: Callable[[str], Awaitable[IMailAccount]], key_dir: str,
                 resolve_part: ResolvePart) -> None:
        self.open_account = open_account
        self.keys = keys_in(key_dir)
        self.resolve_part = resolve_part

    def fetch(self, text: str, requester: str, role: str) -> defer.Deferred[IFetchedPart | None]:
        return defer.Deferred.fromCoroutine(self._fetch(text, requester, role))

    async def _fetch(self, text: str, requester: str, role: str) -> IFetchedPart | None:
        try:
            url = imapurl.parse(text)
        except imapurl.BadUrl:
            return None
        if url.host is None or url.user is None:
            return None  # RFC 4467 6: an authorized URL is absolute and names its owner
        owner = url.user
        if url.access is None:
            # Not authorized by URLAUTH: only a submission server, for the user it
            # authenticated, in that user's own mailboxes (RFC 4468 3.2, "trusted").
            if role != SUBMISSION or owner.lower() != requester.lower():
                return None
        elif (url.mechanism != authorize.MECHANISM or not url.token
              or authorize.expired(url)
              or not authorize.access_allows(url.access, requester, role)
              or not await self.keys.has_keys(owner)):
            return None
        try:
            account = await self.open_account(owner)
            folder = await account.open_folder(imapurl.store_name(url.mailbox))
        except (NoSuchFolder, LookupError, PermissionError):
            return None
        if url.access is not None:
            key = await self.keys.key(owner, folder.mailbox_id)
            if key is None or not authorize.verifies(key, url):
                return None
        try:
            found, info, got = await self.resolve_part(account, url)
        except imapurl.BadUrl:
            return None
        return FetchedPart(found, info, got)
