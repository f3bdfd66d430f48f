"""URLAUTH (RFC 4467): GENURLAUTH, RESETKEY and URLFETCH; URL-PARTIAL (RFC 5550).

GENURLAUTH signs a URL of one of the user's messages for an access identifier
(``anonymous``, ``authuser``, ``user+<name>``, ``submit+<name>``) with the INTERNAL
mechanism: the token is HMAC-SHA-256, under the mailbox's access key
(``urlauth_keys``), of the URL up to its ``;URLAUTH=<access>`` in the form
``imapurl.ImapUrl.format`` writes (so a client's spelling of the same URL verifies).
RESETKEY replaces a mailbox's key, or drops all of the user's, which voids every URL
made with them. URLFETCH answers each URL with its data (``;PARTIAL=`` ranges included,
streamed from the store's reader) or NIL when it does not verify.

What this server can serve: a session reaches only its own user's account (the store
contract gives a protocol the logged-in user's ``IMailAccount`` and nothing else), so
URLFETCH answers URLs of the session's own user: ``anonymous``, ``authuser`` and
``user+<self>``. ``submit+`` URLs are for a submission server (BURL, RFC 4468), which
mailhost has not, so URLFETCH answers them NIL.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from typing import TYPE_CHECKING

from mailhost.imap import imapurl, parser, rev2
from mailhost.imap.catenate import open_url, store_name
from mailhost.imap.encoding import astring
from mailhost.imap.output import stream_message
from mailhost.imap.responses import Bad, No
from mailhost.imap.states import AUTH
from mailhost.imap.urlauth_keys import keys_in
from mailhost.store.interfaces import IFolder, NoSuchFolder

if TYPE_CHECKING:
    from mailhost.imap.server import IMAPServer

CAPABILITIES = (b"URLAUTH", b"URL-PARTIAL")
MECHANISM = "INTERNAL"


def token(key: bytes, url: imapurl.ImapUrl) -> str:
    """The INTERNAL token of ``url`` (its rump, mechanism and token left out)."""
    rump = url.format(with_authorization=False).encode("utf-8")
    return hmac.new(key, rump, hashlib.sha256).hexdigest()


def _keys(s: IMAPServer):
    if not s.settings.urlauth_dir:
        raise Bad("URLAUTH is not enabled")
    return keys_in(s.settings.urlauth_dir)


def _expired(url: imapurl.ImapUrl) -> bool:
    if url.expire is None:
        return False
    when = datetime.datetime.fromisoformat(url.expire.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when <= datetime.datetime.now(datetime.UTC)


async def _folder(s: IMAPServer, url: imapurl.ImapUrl) -> IFolder:
    try:
        return await s.account.open_folder(store_name(url.mailbox))
    except NoSuchFolder:
        raise No("[NONEXISTENT] No such mailbox") from None


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
            raise No("[BADURL " + text.replace("]", "") + "] Only INTERNAL is supported")
        try:
            url = imapurl.parse(text)
        except imapurl.BadUrl as e:
            raise No(f"[BADURL {text.replace(']', '')}] {e}") from None
        problem = None
        if url.host is None or url.user is None:
            problem = "The URL must be absolute and name its user"
        elif url.access is None or url.mechanism is not None:
            problem = "The URL must end in ;URLAUTH=<access>"
        elif url.user.lower() != s.account.user.lower():
            problem = "The URL names another user's mailbox"
        elif _expired(url):
            problem = "The URL has expired"
        if problem is not None:
            raise No(f"[BADURL {text.replace(']', '')}] {problem}")
        folder = await _folder(s, url)
        key = await keys.key(s.account.user, folder.mailbox_id, create=True)
        made.append(astring(f"{text}:{MECHANISM}:{token(key, url)}".encode("ascii")))
    s.send(b"* GENURLAUTH " + b" ".join(made) + b"\r\n")
    return b"GENURLAUTH completed"


async def resetkey(s: IMAPServer, cmd: parser.Command) -> bytes:
    keys = _keys(s)
    if not cmd.args:
        await keys.reset(s.account.user)
        return b"RESETKEY completed"
    from mailhost.imap.commands_mailbox import mailbox_name

    for mech in cmd.args[1:]:
        if not isinstance(mech, parser.Atom) or mech.upper() != MECHANISM:
            raise Bad("Only the INTERNAL mechanism is supported")
    try:
        folder = await s.account.open_folder(mailbox_name(cmd.args[0], rev2.utf8_names(s)))
    except NoSuchFolder:
        raise No("[NONEXISTENT] No such mailbox") from None
    await keys.reset(s.account.user, folder.mailbox_id)
    return b"RESETKEY completed"


def _allowed(s: IMAPServer, access: str) -> bool:
    low = access.lower()
    me = s.account.user.lower()
    if low in ("anonymous", "authuser"):
        return True
    if low.startswith("user+"):
        return low[5:] == me
    return False  # submit+<user>: for a BURL submission server; others unknown


async def _verified(s: IMAPServer, text: str):
    """The ``open_url`` answer of an authorized URL, or None."""
    try:
        url = imapurl.parse(text)
    except imapurl.BadUrl:
        return None
    if (url.host is None or url.user is None or url.access is None
            or url.mechanism != MECHANISM or not url.token or _expired(url)
            or url.user.lower() != s.account.user.lower() or not _allowed(s, url.access)):
        return None
    try:
        folder = await s.account.open_folder(store_name(url.mailbox))
    except NoSuchFolder:
        return None
    key = await keys_in(s.settings.urlauth_dir).key(s.account.user, folder.mailbox_id)
    if key is None or not hmac.compare_digest(token(key, url), url.token):
        return None
    try:
        return await open_url(s.account, url)
    except imapurl.BadUrl:
        return None


async def urlfetch(s: IMAPServer, cmd: parser.Command) -> bytes:
    _keys(s)
    if not cmd.args:
        raise Bad("URLFETCH expects URLs")
    texts = []
    for arg in cmd.args:
        if isinstance(arg, list):
            raise Bad("URLFETCH parameters (RFC 5524) are not supported")
        texts.append(parser.as_string(arg, "URL"))
    for raw_text in texts:
        head = b"* URLFETCH " + astring(raw_text) + b" "
        got = await _verified(s, raw_text.decode("ascii", "replace"))
        if got is None:
            s.send(head + b"NIL\r\n")
            continue
        folder, info, data = got
        if isinstance(data, bytes):
            s.send(head + b"{%d}\r\n" % len(data) + data + b"\r\n")
            continue
        start, end = data
        s.send(head + b"{%d}\r\n" % (end - start))
        if end > start:
            reader = await folder.read_message(info.uid, start, end - start)
            try:
                await stream_message(reader, end - start, s.send, s.gate, s.resetTimeout)
            finally:
                reader.close()
        s.send(b"\r\n")
        await s.drain()
    return b"URLFETCH completed"


HANDLERS = {
    "GENURLAUTH": (AUTH, genurlauth),
    "RESETKEY": (AUTH, resetkey),
    "URLFETCH": (AUTH, urlfetch),
}
