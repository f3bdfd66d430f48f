"""Copying accounts between stores with their UIDs (``mailhost store export|import``).

A site moving from Maildir to PostgreSQL (or back) must not make its clients
resync: every folder keeps its UIDVALIDITY, UIDNEXT and MAILBOXID, every message its
UID, flags and keywords and INTERNALDATE, and the account its subscriptions and
special-use folders. The store contract cannot ask for a given UID (a store hands
UIDs out), so the source is read through the contract (any ``IMailStore``) and the
destination is written by a loader made for its backend (``IAccountLoader``:
``maildir_load.MaildirLoader``, ``postgresql.load.PostgresLoader``), which writes
what the store itself would have written. One message is in flight at a time, read
from its file in a thread, so a big account copies in bounded memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from twisted.internet import defer
from zope.interface import Interface

from mailhost.store.interfaces import IAccountListing, IMailStore, StoreError

_T = TypeVar("_T")


class IAccountLoader(Interface):
    """Writes one account into a store with the UIDs it is given. Blocking: every call
    runs in a thread. Nothing is visible (PostgreSQL) or complete (Maildir) before
    ``finish``; ``abort`` throws away what was written when the copy fails."""

    def folder(name: str, uid_validity: int, uid_next: int, highest_modseq: int,
               special_use: str | None, mailbox_id: str) -> None:
        """Start a folder (the previous one is complete)."""

    def message(uid: int, flags: frozenset[str], internal_date: float, modseq: int,
                body: BinaryIO) -> None:
        """Add a message to the current folder, reading its CRLF bytes from ``body``."""

    def finish(subscriptions: Iterable[str]) -> None:
        """Write the subscriptions and make the account whole."""

    def abort() -> None:
        """Undo what can be undone (PostgreSQL rolls back; Maildir leaves the tree)."""


@dataclass
class Copied:
    """What one account's copy carried over."""

    user: str
    folders: int = 0
    messages: int = 0


async def copy_account(source: IMailStore, user: str, loader: Any,
                       run: Callable[..., defer.Deferred[Any]]) -> Copied:
    """Copy ``user``'s account from ``source`` into ``loader`` (an ``IAccountLoader``),
    calling every blocking loader method through ``run`` (a thread hop). StoreError
    when the source has no such account."""
    if IAccountListing.providedBy(source):
        known = await source.accounts()
        if user not in known:
            raise StoreError(f"{user}: no such account in the source store")
    account = await source.open_account(user)
    done = Copied(user)
    try:
        names = await account.list_folders()
        subscribed = await account.subscriptions()
        for name in names:
            folder = await account.open_folder(name)
            await folder.refresh()
            await run(loader.folder, name, folder.uid_validity, folder.uid_next,
                      folder.highest_modseq, folder.special_use, folder.mailbox_id)
            done.folders += 1
            for info in folder.messages():
                body = await folder.open_message(info.uid)
                try:
                    await run(loader.message, info.uid, info.flags, info.internal_date,
                              info.modseq, body)
                finally:
                    await run(body.close)
                done.messages += 1
        await run(loader.finish, sorted(subscribed))
    except BaseException:
        await run(loader.abort)
        raise
    return done
