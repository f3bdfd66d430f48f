"""APPEND as every store's account does it: open the folder, commit the message there.

Shared by MaildirAccount and MemoryAccount (and any store that likes it), so the
IMailAccount.append contract has one reading: the folder must exist (NoSuchFolder,
and the message is thrown away), the copy gets the flags and date asked for, and the
answer is what APPENDUID needs."""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet import defer

from mailhost.store.interfaces import DeliveryTarget, IMailAccount, IMessageWriter


async def _append(account: IMailAccount, name: str, message: IMessageWriter,
                  flags: Iterable[str], internal_date: float | None,
                  recent: bool) -> tuple[int, int]:
    try:
        folder = await account.open_folder(name)
        uids = await message.commit([DeliveryTarget(account.user, folder.name,
                                                    frozenset(flags), internal_date,
                                                    recent=recent)])
    except BaseException:
        message.abort()  # idempotent; a no-op after a commit
        raise
    uid = uids[0]
    assert uid is not None  # a target wants its UID by default: numbered now
    uid_validity: int = folder.uid_validity
    return uid_validity, uid


def append_message(account: IMailAccount, name: str, message: IMessageWriter,
                   flags: Iterable[str] = (), internal_date: float | None = None,
                   recent: bool = True) -> defer.Deferred[tuple[int, int]]:
    """IMailAccount.append on top of ``open_folder`` and the writer's commit."""
    return defer.Deferred.fromCoroutine(_append(account, name, message, flags,
                                                internal_date, recent))
