"""Mailbox delivery as a delivery target (``IDeliveryTarget``) over any ``IMailStore``.

Final delivery: the copy starts with ``Return-Path:`` (RFC 5321 §4.4), whoever
delivers it (SMTP, local delivery of queued mail when an MX points back at us, DSNs to
local senders). It is written on the store contract only (``new_message`` and
``IMessageWriter``), so every store gets it, and how a store commits several copies
(Maildir: one tmp file, linked into every folder as one unit through a commit
journal, maildir_io._commit_all) stays inside that store's writer.

The store has no held state: its ``commit`` makes every copy durable and visible at
once. So ``prepare`` is the store's commit, ``holds`` is False, and ``commit`` has
nothing left to do; a coordinator prepares this target after the ones that can hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from mailhost.message.headers import return_path_header
from mailhost.message.target import IDeliveryTarget
from mailhost.store.interfaces import DeliveryTarget, FolderExists, IMailAccount, IMailStore


@implementer(IDeliveryTarget)
class MailboxTarget:
    """Implements: IDeliveryTarget. One message into one or more folders of a store."""

    holds = False

    def __init__(self, store: IMailStore, sender: str, copies: Sequence[DeliveryTarget]) -> None:
        self._store = store
        self._sender = sender
        self.copies = list(copies)
        self._writer: Any = None  # an IMessageWriter from begin() on
        #: The UIDs the store's commit gave, one per copy (None where not wanted).
        self.uids: list[int | None] = []

    def begin(self) -> None:
        self._writer = self._store.new_message()
        self._writer.write(return_path_header(self._sender))

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def prepare(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._prepare())

    async def _prepare(self) -> None:
        for i, copy in enumerate(self.copies):
            if copy.special_use is not None:
                account = await self._store.open_account(copy.user)
                name = await folder_with_role(account, copy.special_use, copy.folder)
                self.copies[i] = replace(copy, folder=name, special_use=None)
        self._committed(await defer.maybeDeferred(self._writer.commit, self.copies))

    def _committed(self, uids: list[int | None]) -> None:
        self.uids = list(uids)

    def commit(self) -> None:
        """Nothing left: the store's commit (``prepare``) delivered every copy."""

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()  # a no-op once the store committed


async def folder_with_role(account: IMailAccount, special_use: str, default: str) -> str:
    """The account's folder marked ``special_use`` (a user may have renamed Junk to
    Spam), else ``default``, created with that mark if it is missing: quarantined mail
    is filed, never refused, because the user deleted a folder."""
    names = await account.list_folders()
    if default in names and (await account.open_folder(default)).special_use == special_use:
        return default
    for name in names:
        if (await account.open_folder(name)).special_use == special_use:
            return name
    if default not in names:
        try:
            await account.create_folder(default, special_use)
        except FolderExists:  # a concurrent delivery made it first
            pass
    return default
