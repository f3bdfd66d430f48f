"""URLAUTH (RFC 4467): GENURLAUTH, RESETKEY and URLFETCH; URL-PARTIAL (RFC 5550).

GENURLAUTH signs a URL of one of the user's messages for an access identifier
(``anonymous``, ``authuser``, ``user+<name>``, ``submit+<name>``) with the INTERNAL
mechanism (``mailhost.urlfetch.authorize``: HMAC-SHA-256 of the URL rump under the
mailbox's access key, ``mailhost.urlfetch.keys``). A URL it cannot sign is a tagged BAD
(RFC 4467 7: "If any of the above checks fail, the server MUST return a tagged BAD
response"): not absolute, another user's, no ``;URLAUTH=<access>`` or a bad one, already
signed, expired, an unknown mechanism, a mailbox that does not exist. RESETKEY replaces
a mailbox's key, or drops all of the user's, which voids every URL made with them, and
says ``[URLMECH INTERNAL]`` (RFC 4467 8), as SELECT/EXAMINE do.

URLFETCH answers each URL with its data (``;PARTIAL=`` ranges included, streamed from
the store's reader) or NIL when it does not verify, for any reason (RFC 4467 7). It runs
"with the access of the userid in the server component of the URL": through the
listener's ``IUrlFetcher`` (service.py gives it one over the whole store), another
user's ``anonymous``, ``authuser`` or ``user+<me>`` URL is answered too. A listener
without one (an embedded factory) answers the session's own user's URLs only.
``submit+`` URLs are for the submission server (BURL, ``mailhost.smtp.burl``): NIL here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from mailhost.imap import imapurl, parser, rev2
from mailhost.imap.catenate import open_url, store_name
from mailhost.imap.encoding import astring
from mailhost.imap.output import stream_message
from mailhost.imap.responses import Bad, No
from mailhost.imap.states import AUTH
from mailhost.store.interfaces import IFolder, IMailAccount, NoSuchFolder
from mailhost.urlfetch import IMAP_SESSION, IUrlFetcher, authorize
from mailhost.urlfetch.fetcher import UrlAuthFetcher
from mailhost.urlfetch.keys import keys_in

if TYPE_CHECKING:
    from mailhost.imap.server import IMAPServer

CAPABILITIES = (b"URLAUTH", b"URL-PARTIAL")
MECHANISM = authorize.MECHANISM
#: RFC 4467 8: the mechanisms this server has, for RESETKEY's OK and SELECT.
URLMECH = b"[URLMECH INTERNAL]"

token = authorize.token  # (kept: tests and older callers name it here)


def _keys(s: IMAPServer):
    if not s.settings.urlauth_dir:
        raise Bad("URLAUTH is not enabled")
    return keys_in(s.settings.urlauth_dir)


def fetcher(s: IMAPServer) -> IUrlFetcher:
    """The listener's fetcher, or one that reaches the session's own account only."""
    shared = s.factory.url_fetcher
    if shared is not None:
        return shared
    account = s.account

    def own(user: str) -> defer.Deferred[IMailAccount]:
        if user.lower() != account.user.lower():
            return defer.fail(LookupError(user))
        return defer.succeed(account)

    return UrlAuthFetcher(own, s.settings.urlauth_dir, open_url)


async def _folder(s: IMAPServer, url: imapurl.ImapUrl) -> IFolder:
    try:
        return await s.account.open_folder(store_name(url.mailbox))
    except NoSuchFolder:
        raise Bad("[NONEXISTENT] No such mailbox") from None


async def genurlauth(s: IMAPServer, cmd: parser.Command) -> bytes:
    keys = _keys(s)
    args = cmd.args
    if not args or len(args) % 2:
        raise Bad("GENURLAUTH expects pairs of URL and mechanism")
    made = []
    for i in range(0, len(args), 2):
        text = parser.as_string(args[i], "URL").decode("ascii", "replace")
        mech = args[i + 1]
        if not isinstance(mech, parser.Atom) or mech.upper() != MECHANISM:
            raise Bad("Only the INTERNAL mechanism is supported")
        try:
            url = imapurl.parse(text)
        except imapurl.BadUrl as e:
            raise Bad(f"Invalid URL: {e}") from None
        problem = None
        if url.host is None or url.user is None:
            problem = "The URL must be absolute and name its user"
        elif url.access is None or url.mechanism is not None:
            problem = "The URL must end in ;URLAUTH=<access>"
        elif not authorize.valid_access(url.access):
            problem = "Unknown access identifier"
        elif url.user.lower() != s.account.user.lower():
            problem = "The URL names another user's mailbox"
        elif authorize.expired(url):
            problem = "The URL has expired"
        if problem is not None:
            raise Bad(problem)
        folder = await _folder(s, url)
        key = await keys.key(s.account.user, folder.mailbox_id, create=True)
        made.append(astring(f"{text}:{MECHANISM}:{authorize.token(key, url)}".encode("ascii")))
    s.send(b"* GENURLAUTH " + b" ".join(made) + b"\r\n")
    return b"GENURLAUTH completed"


async def resetkey(s: IMAPServer, cmd: parser.Command) -> bytes:
    keys = _keys(s)
    if not cmd.args:
        await keys.reset(s.account.user)
        return URLMECH + b" RESETKEY completed"
    from mailhost.imap.commands_mailbox import mailbox_name

    for mech in cmd.args[1:]:
        if not isinstance(mech, parser.Atom) or mech.upper() != MECHANISM:
            raise Bad("Only the INTERNAL mechanism is supported")
    try:
        folder = await s.account.open_folder(mailbox_name(cmd.args[0], rev2.utf8_names(s)))
    except NoSuchFolder:
        raise No("[NONEXISTENT] No such mailbox") from None
    await keys.reset(s.account.user, folder.mailbox_id)
    return URLMECH + b" RESETKEY completed"


async def urlfetch(s: IMAPServer, cmd: parser.Command) -> bytes:
    _keys(s)
    if not cmd.args:
        raise Bad("URLFETCH expects URLs")
    texts = []
    for arg in cmd.args:
        if isinstance(arg, list):
            raise Bad("URLFETCH parameters (RFC 5524) are not supported")
        texts.append(parser.as_string(arg, "URL"))
    fetch = fetcher(s)
    for raw_text in texts:
        head = b"* URLFETCH " + astring(raw_text) + b" "
        try:
            text = raw_text.decode("ascii")
        except UnicodeDecodeError:
            text = ""  # an IMAP URL is ASCII (RFC 5092): names nothing
        got = await fetch.fetch(text, s.account.user, IMAP_SESSION) if text else None
        if got is None:
            s.send(head + b"NIL\r\n")
            continue
        s.send(head + b"{%d}\r\n" % got.size)
        try:
            reader: Any = got  # IFetchedPart reads (read/close) as an IMessageReader does
            await stream_message(reader, got.size, s.send, s.gate, s.resetTimeout)
        finally:
            got.close()
        s.send(b"\r\n")
        await s.drain()
    return b"URLFETCH completed"


HANDLERS = {
    "GENURLAUTH": (AUTH, genurlauth),
    "RESETKEY": (AUTH, resetkey),
    "URLFETCH": (AUTH, urlfetch),
}
