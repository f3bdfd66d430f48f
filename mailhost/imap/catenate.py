"""CATENATE (RFC 4469): APPEND a message put together from literals and IMAP URLs.

``APPEND box [flags] [date] CATENATE (TEXT {n} URL "/INBOX;UIDVALIDITY=v/;UID=u/;SECTION=1")``,
also as one message of a MULTIAPPEND (RFC 3502), whose other messages may be plain
literals. A URL names a message or part of one the user can read on this server
(``mailhost.imap.imapurl``; RFC 5550 ``;PARTIAL=`` too); its bytes go from the store's
message reader into the new message's writer chunk by chunk, so a big part never sits
in memory. A URL that does not resolve fails the whole APPEND with ``NO [BADURL url]``,
a result over APPENDLIMIT with ``NO [TOOBIG]``. TEXT parts are literals read in memory
(each at most ``imap.max_literal_size``; the server does not stream a CATENATE
command's literals into the store); NUL in a TEXT literal8 is ``NO [UNKNOWN-CTE]`` (a
fragment cannot be re-encoded as ``imap.binary_append`` does a whole message). Commit is ``commands_mailbox.commit_appends``: all
or none, with the quota check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailhost.imap import commands_mailbox, imapurl, parser, rev2
from mailhost.imap.fetch import section_bytes
from mailhost.imap.parser import Atom, Literal
from mailhost.imap.responses import Bad, No
from mailhost.imap.states import AUTH
from mailhost.store.interfaces import (
    SYSTEM_FLAGS,
    IFolder,
    IMailAccount,
    IMessageWriter,
    MessageInfo,
    NoSuchFolder,
)

if TYPE_CHECKING:
    from mailhost.imap.server import IMAPServer

CAPABILITIES = (b"CATENATE",)
CHUNK = 64 * 1024

Part = tuple[str, bytes]  # ("TEXT", data) | ("URL", url text) | ("MESSAGE", literal)


def _is_catenate(args: list) -> bool:
    return any(isinstance(a, Atom) and a.upper() == "CATENATE" for a in args[1:])


def parse_append(args: list) -> tuple[bytes, list[tuple[list[str], float | None, list[Part]]]]:
    """``(mailbox, [(flags, date, parts), ...])``: APPEND's arguments with CATENATE."""
    if len(args) < 2:
        raise parser.ParseError(None, "APPEND expects a mailbox and a message")
    mailbox = parser.as_string(args[0], "mailbox name")
    rest = list(args[1:])
    out: list[tuple[list[str], float | None, list[Part]]] = []
    while rest:
        flags: list[str] = []
        date = None
        if isinstance(rest[0], list):
            flags = parser.parse_flag_list(rest.pop(0))
        if rest and isinstance(rest[0], bytes) and not isinstance(rest[0], Literal):
            date = parser.parse_datetime(rest.pop(0))
        if not rest:
            raise parser.ParseError(None, "APPEND message missing")
        head = rest.pop(0)
        if isinstance(head, Literal):
            out.append((flags, date, [("MESSAGE", bytes(head))]))
            continue
        if not (isinstance(head, Atom) and head.upper() == "CATENATE") or not rest \
                or not isinstance(rest[0], list) or not rest[0]:
            raise parser.ParseError(None, "APPEND expects a literal or CATENATE (...)")
        items = rest.pop(0)
        parts: list[Part] = []
        for i in range(0, len(items), 2):
            kind, value = items[i], items[i + 1] if i + 1 < len(items) else None
            if not isinstance(kind, Atom) or kind.upper() not in ("TEXT", "URL") \
                    or value is None or isinstance(value, list):
                raise parser.ParseError(None, "CATENATE expects TEXT literal or URL url")
            if kind.upper() == "TEXT":
                if not isinstance(value, Literal):
                    raise parser.ParseError(None, "CATENATE TEXT must be a literal")
                parts.append(("TEXT", bytes(value)))
            else:
                parts.append(("URL", parser.as_string(value, "URL")))
        out.append((flags, date, parts))
    return mailbox, out


def _bad_url(text: bytes, why: str) -> No:
    shown = bytes(c for c in text if c not in b"]\r\n")
    return No(f"[BADURL {shown.decode('ascii', 'replace')}] {why}")


store_name = imapurl.store_name


async def open_url(account: IMailAccount, url: imapurl.ImapUrl
                   ) -> tuple[IFolder, MessageInfo, tuple[int, int] | bytes]:
    """The folder, message and ``fetch.section_bytes`` answer of a URL of ``account``'s
    (CATENATE; URLFETCH once the authorization is checked); ``imapurl.BadUrl`` saying
    why not."""
    if url.user is not None and url.user.lower() != account.user.lower():
        raise imapurl.BadUrl("The URL names another user's mailbox")
    try:
        folder = await account.open_folder(store_name(url.mailbox))
    except NoSuchFolder:
        raise imapurl.BadUrl("No such mailbox") from None
    if url.uidvalidity is not None and url.uidvalidity != folder.uid_validity:
        raise imapurl.BadUrl("UIDVALIDITY changed")
    info = folder.get(url.uid)
    if info is None:
        raise imapurl.BadUrl("No such message")
    try:
        section = parser.parse_section(url.section or "")
    except parser.ParseError:
        raise imapurl.BadUrl("Invalid section") from None
    partial = None
    if url.partial is not None:  # RFC 5550
        off, length = url.partial
        partial = (off, length if length is not None else max(1, info.size))
    return folder, info, await section_bytes(folder, info, section, partial)


async def copy_url(s: IMAPServer, text: bytes, writer: IMessageWriter, limit: int) -> None:
    """Write what the IMAP URL ``text`` names into ``writer``, chunk by chunk."""
    try:
        selected = s.selected.folder.name if s.selected is not None else None
        url = imapurl.parse(imapurl.resolve(text.decode("ascii"), selected))
        if url.access is not None or url.expire is not None:
            raise imapurl.BadUrl("URLAUTH-authorized URLs are not accepted here")
        folder, info, got = await open_url(s.account, url)
    except UnicodeDecodeError:
        raise _bad_url(text, "Invalid IMAP URL") from None
    except imapurl.BadUrl as e:
        raise _bad_url(text, str(e)) from None
    if isinstance(got, bytes):
        if writer.size + len(got) > limit:
            raise No("[TOOBIG] The message would be larger than APPENDLIMIT")
        writer.write(got)
        return
    start, end = got
    if writer.size + (end - start) > limit:
        raise No("[TOOBIG] The message would be larger than APPENDLIMIT")
    if end <= start:
        return
    reader = await folder.read_message(info.uid, start, end - start)
    try:
        while chunk := await reader.read():
            writer.write(chunk)
    finally:
        reader.close()


async def append(s: IMAPServer, cmd: parser.Command) -> bytes:
    """APPEND; with CATENATE anywhere in it, here, else ``commands_mailbox.append``."""
    if not _is_catenate(cmd.args):
        return await commands_mailbox.append(s, cmd)
    raw_name, messages = parse_append(cmd.args)
    name = commands_mailbox.mailbox_name(raw_name, rev2.utf8_names(s))
    limit = s.settings.max_literal_size
    account = s.account
    for flags, _, _ in messages:
        for f in flags:
            if f.startswith("\\") and f not in SYSTEM_FLAGS and f != "\\Recent":
                raise Bad(f"Invalid flag {f}")
    plan: list[tuple[IMessageWriter, frozenset[str], float | None]] = []
    try:
        for flags, date, parts in messages:
            writer = account.new_message()
            plan.append((writer, frozenset(f for f in flags if f != "\\Recent"), date))
            for kind, value in parts:
                if kind == "URL":
                    await copy_url(s, value, writer, limit)
                    continue
                if writer.size + len(value) > limit:
                    raise No("[TOOBIG] The message would be larger than APPENDLIMIT")
                if b"\0" in value:  # only a literal8 gets here with NUL (parser)
                    raise No("[UNKNOWN-CTE] NUL octets in a CATENATE TEXT part cannot be"
                             " stored; APPEND the whole message as a literal8 (RFC 3516)")
                for i in range(0, len(value), CHUNK):
                    writer.write(value[i:i + CHUNK])
            if writer.size == 0:
                raise No("Cannot append an empty message")
        try:
            await account.open_folder(name)
        except NoSuchFolder:
            raise No("[TRYCREATE] Mailbox does not exist") from None
    except BaseException:
        for writer, _, _ in plan:
            writer.abort()
        raise
    return await commands_mailbox.commit_appends(account, name, plan, s.selected)


HANDLERS = {"APPEND": (AUTH, append)}
