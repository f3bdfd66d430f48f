"""MaildirAccount: one user's Maildir++ folders, subscriptions and special-use
(Implements: IMailAccount). Folder-tree changes are serialised per account."""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from twisted.internet import defer
from zope.interface import implementer

from mailhost.store._maildir import maildir_io
from mailhost.store._maildir.maildir_folder import MaildirFolder, Row
from mailhost.store._maildir.maildir_quota import MaildirQuotaRoot
from mailhost.store.append import append_message
from mailhost.store.interfaces import (
    FolderExists,
    IFolder,
    IMailAccount,
    IMessageWriter,
    InvalidFolderName,
    NoSuchFolder,
)
from mailhost.store.names import INBOX, canonical_folder, is_inferior, parents
from mailhost.store.quota import IQuotaRoot

if TYPE_CHECKING:  # it imports this module
    from mailhost.store.maildir import MaildirStore

_T = TypeVar("_T")


@implementer(IMailAccount, IQuotaRoot)
class MaildirAccount(MaildirQuotaRoot):
    """Implements: IMailAccount and IQuotaRoot over one user's Maildir++ root."""

    def __init__(self, store: MaildirStore, user: str, root: str) -> None:
        self._store = store
        self.user = user
        self._root = root
        self._folders: dict[str, MaildirFolder] = {}
        self._opening: dict[str, list[defer.Deferred[MaildirFolder]]] = {}
        self._special: dict[str, str] = {}
        self._subs: set[str] = set()
        self._lock = defer.DeferredLock()
        self._quota_lock = threading.Lock()  # maildirsize, in the thread pool

    def _dir(self, name: str) -> str:
        return self._root if name == INBOX else os.path.join(self._root,
                                                             maildir_io.folder_dir_name(name))

    async def _setup(self) -> None:
        self._special, self._subs = await self._store.run_blocking(
            maildir_io.setup_account, self._root, self._store.fsync, self._store.modes)

    async def _folder(self, name: str) -> MaildirFolder:
        """The live folder object, loading its index on first use (shared by callers)."""
        canon = canonical_folder(name)
        folder = self._folders.get(canon)
        if folder is not None:
            return folder
        if canon in self._opening:
            opened: defer.Deferred[MaildirFolder] = defer.Deferred()
            self._opening[canon].append(opened)
            return await opened
        self._opening[canon] = []
        folder = MaildirFolder(self._store, self, canon, self._dir(canon))
        try:
            await folder._load()
        except BaseException as e:
            await folder._close_uids()  # dropped: let go of the uidlist it may hold open
            err = NoSuchFolder(canon) if isinstance(e, NoSuchFolder) else e
            for d in self._opening.pop(canon):
                d.errback(err)
            raise err from None
        self._folders[canon] = folder
        for d in self._opening.pop(canon):
            d.callback(folder)
        return folder

    def _delivered_unopened(self, row: Row) -> None:
        """A copy was delivered into INBOX, not open then, with its UID to come (see
        maildir_writer): if INBOX was opened meanwhile, or is being opened, it numbers
        the file unless its listing already did; else its next open adopts it."""
        folder = self._folders.get(INBOX)
        if folder is not None:
            folder._delivered([row], expected=False)
        elif INBOX in self._opening:
            d: defer.Deferred[MaildirFolder] = defer.Deferred()
            self._opening[INBOX].append(d)
            d.addCallbacks(lambda f: f._delivered([row], expected=False), lambda _: None)

    # -- the delivery API: what MaildirMessageWriter may use of an account ---------------

    async def folder(self, name: str) -> MaildirFolder:
        """The live folder (loaded on first use); NoSuchFolder if absent."""
        return await self._folder(name)

    def loaded_folder(self, name: str) -> MaildirFolder | None:
        """The live folder if it is open in this process, else None (nothing is read)."""
        return self._folders.get(canonical_folder(name))

    def folder_path(self, name: str) -> str:
        """The directory of folder ``name`` (canonical), open or not."""
        return self._dir(name)

    def number_unopened(self, row: Row) -> None:
        """A copy delivered into INBOX while it was not open, its UID to come."""
        self._delivered_unopened(row)

    def _tree(self, fn: Callable[..., Awaitable[_T]], *args: object) -> defer.Deferred[_T]:
        async def run() -> _T:
            await self._lock.acquire()
            try:
                return await fn(*args)
            finally:
                self._lock.release()

        return defer.Deferred.fromCoroutine(run())

    def new_message(self) -> IMessageWriter:
        return self._store.new_message()

    def append(self, name: str, message: IMessageWriter, flags: Iterable[str] = (),
               internal_date: float | None = None, recent: bool = True,
               ) -> defer.Deferred[tuple[int, int]]:
        return append_message(self, name, message, flags, internal_date, recent)

    def list_folders(self) -> defer.Deferred[list[str]]:
        async def run() -> list[str]:
            names = await self._store.run_blocking(maildir_io.list_folder_names, self._root)
            return [INBOX, *sorted(names)]

        return defer.Deferred.fromCoroutine(run())

    def open_folder(self, name: str) -> defer.Deferred[IFolder]:
        return defer.Deferred.fromCoroutine(self._folder(name))

    def create_folder(self, name: str,
                      special_use: str | None = None) -> defer.Deferred[None]:
        return self._tree(self._create, name, special_use)

    async def _create(self, name: str, special_use: str | None) -> None:
        canon = canonical_folder(name)
        paths = [(p, self._dir(p)) for p in [*parents(canon), canon]]
        await self._store.run_blocking(maildir_io.create_dirs, paths, canon, self._store.modes)
        if special_use:
            self._special[canon] = special_use
            await self._save_special()

    async def _save_special(self) -> None:
        text = "".join(f"{n}\t{u}\n" for n, u in sorted(self._special.items()))
        await self._store.run_blocking(maildir_io.write_atomic,
                                     os.path.join(self._root, maildir_io.SPECIAL_USE_FILE),
                                     text, self._store.fsync, self._store.modes)

    def delete_folder(self, name: str) -> defer.Deferred[None]:
        return self._tree(self._delete, name)

    async def _delete(self, name: str) -> None:
        canon = canonical_folder(name)
        if canon == INBOX:
            raise InvalidFolderName("INBOX cannot be deleted")
        folder = self._folders.get(canon)
        if folder is not None:
            await folder._lock.acquire()
            folder._unwatch()  # before its directories go (INotify would close itself)
        try:
            try:
                await self._store.run_blocking(maildir_io.delete_dir, self._dir(canon),
                                             self._root, canon)
            except BaseException:
                if folder is not None:
                    folder._watch_if_listened()
                raise
            await self.quota_recount()  # its messages no longer count
            if folder is not None:
                self._folders.pop(canon, None)
                await folder._forget()
        finally:
            if folder is not None:
                folder._lock.release()
        if self._special.pop(canon, None) is not None:
            await self._save_special()

    def rename_folder(self, old: str, new: str) -> defer.Deferred[None]:
        return self._tree(self._rename, old, new)

    async def _rename(self, old: str, new: str) -> None:
        src, dst = canonical_folder(old), canonical_folder(new)
        if dst == src or is_inferior(dst, src):
            raise InvalidFolderName(f"cannot rename {src} into itself")
        if src == INBOX:
            # RFC 3501: the messages move to the new folder; INBOX stays, empty, and
            # its inferiors are unaffected.
            inbox = await self._folder(INBOX)
            await self._create(dst, None)
            target = await self._folder(dst)
            await inbox.move(list(inbox.columns().uids), target)  # no per-message dates
            return
        existing = set(await self._store.run_blocking(maildir_io.list_folder_names,
                                                    self._root))
        if src not in existing:
            raise NoSuchFolder(src)
        if dst in existing:
            raise FolderExists(dst)
        plan = [(n, dst + n[len(src):]) for n in sorted(existing)
                if n == src or is_inferior(n, src)]
        locked = [self._folders[a] for a, _ in plan if a in self._folders]
        for folder in locked:
            await folder._lock.acquire()
        try:
            await self._store.run_blocking(
                maildir_io.rename_dirs, [(self._dir(a), self._dir(b)) for a, b in plan],
                [self._dir(p) for p in parents(dst)], self._store.modes)
            for a, b in plan:
                moved = self._folders.pop(a, None)
                if moved is not None:
                    moved.name, moved._path = b, self._dir(b)
                    self._folders[b] = moved
                if a in self._special:
                    self._special[b] = self._special.pop(a)
        finally:
            for folder in locked:
                folder._lock.release()
        await self._save_special()

    def subscriptions(self) -> defer.Deferred[set[str]]:
        return defer.succeed(set(self._subs))

    def subscribe(self, name: str) -> defer.Deferred[None]:
        return self._tree(self._set_subscribed, name, True)

    def unsubscribe(self, name: str) -> defer.Deferred[None]:
        return self._tree(self._set_subscribed, name, False)

    async def _set_subscribed(self, name: str, on: bool) -> None:
        canon = canonical_folder(name)
        subs = self._subs | {canon} if on else self._subs - {canon}
        if subs == self._subs:
            return
        text = "".join(f"{n}\n" for n in sorted(subs))
        await self._store.run_blocking(maildir_io.write_atomic,
                                     os.path.join(self._root, maildir_io.SUBSCRIPTIONS_FILE),
                                     text, self._store.fsync, self._store.modes)
        self._subs = subs
