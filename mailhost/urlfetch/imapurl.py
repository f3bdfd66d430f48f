"""IMAP URLs (RFC 5092) naming a message or a part of one on this server, as CATENATE
(RFC 4469), GENURLAUTH/URLFETCH (RFC 4467), URL-PARTIAL (RFC 5550) and SMTP's BURL
(RFC 4468) use them.

Only the forms that name one message are parsed: ``imap://[user[;AUTH=...]@]host[:port]
/mailbox[;UIDVALIDITY=n]/;UID=n[/;SECTION=s][/;PARTIAL=o[.l]][;EXPIRE=t][;URLAUTH=a:m:t]``
and the same from ``/mailbox...`` on (relative to this server, as CATENATE's examples
write them). Names are UTF-8 percent-encoded (RFC 5092 is not RFC 2192's modified
UTF-7); ``format`` writes what ``parse`` reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes


class BadUrl(ValueError):
    """Not an IMAP URL naming one message (or a part of it)."""


@dataclass(frozen=True)
class ImapUrl:
    mailbox: str
    uid: int
    uidvalidity: int | None = None
    section: str | None = None  # as in BODY[...], decoded
    partial: tuple[int, int | None] | None = None  # RFC 5550 (offset, length)
    user: str | None = None
    auth: str | None = None  # ;AUTH= of the user part
    host: str | None = None
    port: int | None = None
    expire: str | None = None  # ;EXPIRE= date-time text (RFC 4467)
    access: str | None = None  # ;URLAUTH=<access> (RFC 4467), e.g. "submit+bob@x"
    mechanism: str | None = None  # INTERNAL
    token: str | None = None  # the hex token of an authorized URL

    def format(self, with_authorization: bool = True) -> str:
        """The URL as text (absolute when it has a host); ``with_authorization=False``
        stops before ``:<mechanism>:<token>``, the part a URLAUTH token signs."""
        out = ""
        if self.host is not None:
            out = "imap://"
            if self.user is not None or self.auth is not None:
                out += _enc(self.user or "", _USER_SAFE)
                if self.auth is not None:
                    out += ";AUTH=" + _enc(self.auth, _USER_SAFE)
                out += "@"
            out += self.host + ("" if self.port is None else f":{self.port}")
        out += "/" + _enc(self.mailbox, _MAILBOX_SAFE)
        if self.uidvalidity is not None:
            out += f";UIDVALIDITY={self.uidvalidity}"
        out += f"/;UID={self.uid}"
        if self.section is not None:
            out += "/;SECTION=" + _enc(self.section, _SECTION_SAFE)
        if self.partial is not None:
            off, length = self.partial
            out += f"/;PARTIAL={off}" + ("" if length is None else f".{length}")
        if self.expire is not None:
            out += ";EXPIRE=" + self.expire
        if self.access is not None:
            out += ";URLAUTH=" + _enc(self.access, _ACCESS_SAFE)
            if with_authorization and self.mechanism is not None:
                out += f":{self.mechanism}:{self.token or ''}"
        return out


_USER_SAFE = "!$&'()*+,=-._~"
_MAILBOX_SAFE = "!$&'()*+,=-._~:@"
_SECTION_SAFE = "!$&'()*+,=-._~:@"
_ACCESS_SAFE = "+-._~@!$&'()*,"
_NUMBER = r"(0|[1-9][0-9]{0,9})"
_NZ = r"([1-9][0-9]{0,9})"
_SERVER = re.compile(r"imap://(?:([^@/]*)@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)"
                     r"(?::([0-9]{1,5}))?(?=/)", re.ASCII | re.IGNORECASE)
_PATH = re.compile(
    r"/([^;/?#][^;?#]*?)(?:;UIDVALIDITY=" + _NZ + r")?"
    r"/;UID=" + _NZ +
    r"(?:/;SECTION=([^/;?#]*))?"
    r"(?:/;PARTIAL=" + _NUMBER + r"(?:\." + _NZ + r")?)?"
    r"(?:;EXPIRE=([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(?:\.[0-9]+)?(?:Z|[+-][0-9]{2}:[0-9]{2})))?"
    r"(?:;URLAUTH=([^:/;?#]+)(?::([A-Za-z0-9-.]+):([0-9A-Fa-f]*))?)?\Z",
    re.ASCII | re.IGNORECASE)


def _enc(text: str, safe: str) -> str:
    return quote(text, safe=safe + "".join(chr(c) for c in range(0x30, 0x3A))
                 + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _dec(text: str, what: str) -> str:
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise BadUrl(f"{what} is not UTF-8") from None


def resolve(text: str, selected: str | None) -> str:
    """A relative IMAP URL made server-relative (RFC 5092 7, RFC 3986 5.2): the base is
    ``imap://user@server/`` and, in the selected state, the selected mailbox (RFC 4469
    3). ``INBOX/;UID=1`` is ``/INBOX/;UID=1``; ``;UID=1`` is a message of the selected
    mailbox (as Dovecot reads it); what else is relative names no message here."""
    if text[:7].lower() == "imap://" or text.startswith("/"):
        return text
    if text[:5].upper() == ";UID=":
        if selected is None:
            raise BadUrl("a mailbox-relative URL, but no mailbox is selected")
        return "/" + _enc(selected, _MAILBOX_SAFE) + "/" + text
    if text.startswith(";") or not text:
        raise BadUrl("not a URL of one message")
    return "/" + text


def parse(text: str) -> ImapUrl:
    """An ``ImapUrl`` from absolute or server-relative text; ``BadUrl`` otherwise."""
    user = auth = host = None
    port = None
    rest = text
    if text[:7].lower() == "imap://":
        m = _SERVER.match(text)
        if m is None:
            raise BadUrl("invalid server part")
        userinfo, host, port_s = m.groups()
        if userinfo is not None:
            name, sep, mech = userinfo.partition(";")
            if sep and not mech.upper().startswith("AUTH="):
                raise BadUrl("invalid user part")
            user = _dec(name, "user") if name else None
            auth = _dec(mech[5:], "auth type") if sep else None
        port = int(port_s) if port_s else None
        rest = text[m.end():]
    m = _PATH.match(rest)
    if m is None or "%2f" in rest[:1].lower():
        raise BadUrl("not a URL of one message")
    box, validity, uid, section, off, length, expire, access, mech, token = m.groups()
    if int(uid) > 0xFFFFFFFF or (validity and int(validity) > 0xFFFFFFFF):
        raise BadUrl("number out of range")
    return ImapUrl(
        mailbox=_dec(box, "mailbox"), uid=int(uid),
        uidvalidity=int(validity) if validity else None,
        section=_dec(section, "section") if section is not None else None,
        partial=(int(off), int(length) if length else None) if off is not None else None,
        user=user, auth=auth, host=host, port=port, expire=expire,
        access=_dec(access, "access") if access is not None else None,
        mechanism=mech.upper() if mech else None,
        token=token.lower() if token is not None else None)


def store_name(name: str) -> str:
    """A URL's mailbox name (UTF-8 already) as the store spells it (INBOX folded)."""
    if name.upper() == "INBOX":
        return "INBOX"
    if name.upper().startswith("INBOX."):
        return "INBOX" + name[5:]
    return name
