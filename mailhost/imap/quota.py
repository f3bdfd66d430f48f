"""QUOTA (RFC 9208): GETQUOTA, GETQUOTAROOT, SETQUOTA, and the checks APPEND and COPY make.

Each user has one quota root, named ``""``, over all their folders, with one resource,
STORAGE (in units of 1024 octets, as the RFC counts it; rounded up, as Dovecot
does). A user without a limit has no quota root: GETQUOTAROOT lists none and
GETQUOTA of ``""`` is NO. Limits are the administrator's (the passwd file's ``quota=``,
``mailhost user quota``), so SETQUOTA is always NO and QUOTASET is not advertised.
STATUS has DELETED and DELETED-STORAGE (commands_mailbox).

APPEND (all messages of a MULTIAPPEND together) and COPY that would take the user
past the limit fail with ``NO [OVERQUOTA]`` before anything is stored. MOVE is not
checked: within one quota root it frees what it takes (the RFC lets it through). The
account's usage comes from the store (``IQuotaRoot``); an account of a store that
counts none has no quota.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from mailhost.imap import parser
from mailhost.imap.responses import Bad, No
from mailhost.imap.states import AUTH
from mailhost.store.interfaces import IFolder, IMailAccount, NoSuchFolder
from mailhost.store.quota import IQuotaRoot, QuotaUsage

if TYPE_CHECKING:
    from mailhost.imap.server import IMAPServer

#: Advertised once logged in.
CAPABILITIES = (b"QUOTA", b"QUOTA=RES-STORAGE")
ROOT = b""


async def _usage(account: IMailAccount) -> QuotaUsage | None:
    """The account's usage and limits, or None when it has no limit."""
    if not IQuotaRoot.providedBy(account) or not account.quota_limit():
        return None  # no limit: no maildirsize read (a thread hop) on every APPEND
    usage: QuotaUsage = await account.quota()
    return usage if usage.storage_limit or usage.message_limit else None


def _kib(octets: int) -> int:
    return (octets + 1023) // 1024  # rounded up, as Dovecot reports it


def _quota_line(usage: QuotaUsage) -> bytes:
    resources = []
    if usage.storage_limit:
        resources.append(b"STORAGE %d %d" % (_kib(usage.storage), _kib(usage.storage_limit)))
    if usage.message_limit:
        resources.append(b"MESSAGE %d %d" % (usage.messages, usage.message_limit))
    return b'* QUOTA "" (' + b" ".join(resources) + b")\r\n"


async def getquotaroot(s: IMAPServer, cmd: parser.Command) -> bytes:
    from mailhost.imap.commands_mailbox import mailbox_name, wire_name
    from mailhost.imap.rev2 import utf8_names

    if len(cmd.args) != 1:
        raise Bad("GETQUOTAROOT expects a mailbox name")
    name = mailbox_name(cmd.args[0], utf8_names(s))
    try:
        folder = await s.account.open_folder(name)
    except NoSuchFolder:
        raise No("[NONEXISTENT] Mailbox does not exist") from None
    usage = await _usage(s.account)
    line = b"* QUOTAROOT " + wire_name(folder.name, utf8_names(s))
    if usage is None:
        s.send(line + b"\r\n")
    else:
        s.send(line + b' ""\r\n' + _quota_line(usage))
    return b"GETQUOTAROOT completed"


async def getquota(s: IMAPServer, cmd: parser.Command) -> bytes:
    if len(cmd.args) != 1:
        raise Bad("GETQUOTA expects a quota root name")
    root = parser.as_string(cmd.args[0], "quota root")
    usage = await _usage(s.account)
    if root != ROOT or usage is None:
        raise No("[NONEXISTENT] No such quota root")
    s.send(_quota_line(usage))
    return b"GETQUOTA completed"


async def setquota(s: IMAPServer, cmd: parser.Command) -> bytes:
    if len(cmd.args) != 2:
        raise Bad("SETQUOTA expects a quota root and a resource list")
    raise No("[NOPERM] Quota limits are set by the administrator")


async def check_room(account: IMailAccount, octets: int, messages: int) -> None:
    """Raise ``NO [OVERQUOTA]`` if ``messages`` more messages of ``octets`` in all would
    take the account past its limit."""
    usage = await _usage(account)
    if usage is not None and not usage.room_for(octets, messages):
        raise No("[OVERQUOTA] Quota exceeded (mailbox is full)")


async def check_copy(account: IMailAccount, folder: IFolder, uids: Iterable[int]) -> None:
    """``check_room`` for a COPY of ``uids`` from ``folder``."""
    if not IQuotaRoot.providedBy(account):
        return
    octets = messages = 0
    for uid in uids:
        info = folder.get(uid)
        if info is not None:
            octets += info.size
            messages += 1
    await check_room(account, octets, messages)


HANDLERS = {
    "GETQUOTAROOT": (AUTH, getquotaroot),
    "GETQUOTA": (AUTH, getquota),
    "SETQUOTA": (AUTH, setquota),
}
