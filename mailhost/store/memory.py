"""MemoryStore: a complete in-process IMailStore for tests and embedding.

Metadata lives in dicts; message bodies live in ``SpooledTemporaryFile``s, so a big
message spills to an anonymous temporary file instead of sitting in RAM. Every
operation returns an already-fired Deferred. Semantics match MaildirStore: a
delivered, copied or moved message is recent until ``claim_recent``.
"""

from __future__ import annotations

import io
import itertools
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, BinaryIO

from twisted.internet import defer
from zope.interface import implementer

from mailhost.message.crlf import CRLFNormalizer
from mailhost.store.append import append_message
from mailhost.store.flags import apply_mode, normalize_flags
from mailhost.store.interfaces import (
    DEFAULT_SPECIAL_FOLDERS,
    DeliveryTarget,
    FolderExists,
    IAccountListener,
    IAccountListing,
    IFolder,
    IFolderListener,
    IMailAccount,
    IMailStore,
    IMessageReader,
    IMessageWriter,
    InvalidFolderName,
    MessageInfo,
    NoSuchFolder,
    NoSuchMessage,
    StoreError,
)
from mailhost.store.listeners import AccountListenerSet
from mailhost.store.modseq import ModSeqListeners, ModSeqs, with_modseq
from mailhost.store.names import INBOX, canonical_folder, is_inferior, parents, split_user
from mailhost.store.objectid import carry, email_ids, new_mailbox_id
from mailhost.store.reader import reader_for

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

#: Bodies up to this size stay in RAM; larger ones spill to a temporary file.
SPOOL_MAX = 1024 * 1024

_keys = itertools.count(1)


def _new_key() -> str:
    now = time.time()
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_keys)}.memory"


class _PreadReader(io.RawIOBase):
    """An independent reader over a shared file descriptor (pread, own position)."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__()
        self._fd = os.dup(fd)
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        buf = memoryview(buffer)  # BufferedReader hands a memoryview already
        n = min(len(buf), self._size - self._pos)
        if n <= 0:
            return 0
        data = os.pread(self._fd, n, self._pos)
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class _Body:
    """Immutable message bytes shared by every copy; freed when the last copy goes."""

    def __init__(self, spool: tempfile.SpooledTemporaryFile[bytes], size: int) -> None:
        self.size = size
        self.refs = 0
        if size <= SPOOL_MAX:
            spool.seek(0)
            self._data: bytes | None = spool.read()
            spool.close()
            self._spool: tempfile.SpooledTemporaryFile[bytes] | None = None
        else:
            spool.rollover()
            spool.flush()
            self._data = None
            self._spool = spool

    def open(self) -> BinaryIO:
        if self._data is not None:
            return io.BytesIO(self._data)
        assert self._spool is not None  # a body not kept in memory keeps its spool
        return io.BufferedReader(_PreadReader(self._spool.fileno(), self.size))

    def incref(self) -> _Body:
        self.refs += 1
        return self

    def decref(self) -> None:
        self.refs -= 1
        if self.refs <= 0 and self._spool is not None:
            self._spool.close()
            self._spool = None


@implementer(IMessageWriter)
class MemoryMessageWriter:
    """Implements: IMessageWriter. Buffers into a SpooledTemporaryFile."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._spool: tempfile.SpooledTemporaryFile[bytes] | None = \
            tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX)
        self._norm = CRLFNormalizer(keep_bare_cr=True)  # as Dovecot stores it
        self._done = False
        self.size = 0

    def write(self, data: bytes) -> None:
        if self._done:
            raise StoreError("write after commit/abort")
        out = self._norm.feed(data)
        assert self._spool is not None  # until commit/abort (refused above)
        self._spool.write(out)
        self.size += len(out)

    def commit(self, targets: Sequence[DeliveryTarget]) -> defer.Deferred[list[int | None]]:
        if self._done:
            return defer.fail(StoreError("commit after commit/abort"))
        try:
            folders = [self._store._target_folder(t) for t in targets]
        except StoreError:
            return defer.fail()
        self._done = True
        assert self._spool is not None  # not committed or aborted yet
        body = _Body(self._spool, self.size)
        self._spool = None
        uids: list[int | None] = []
        for folder, target in zip(folders, targets, strict=True):
            info = folder._append(body, normalize_flags(target.flags), target.internal_date,
                                  recent=target.recent)
            uids.append(info.uid)
        body.incref().decref()  # frees the spool at once if there were no targets
        return defer.succeed(uids)

    def abort(self) -> None:
        if not self._done:
            self._done = True
            assert self._spool is not None  # not committed or aborted yet
            self._spool.close()
            self._spool = None


@implementer(IFolder)
class MemoryFolder:
    """Implements: IFolder. One live object per (user, folder)."""

    def __init__(self, account: MemoryAccount, name: str, uid_validity: int,
                 special_use: str | None = None) -> None:
        self._account = account
        self.name = name
        self.uid_validity = uid_validity
        self.uid_next = 1
        self.special_use = special_use
        self._infos: dict[int, MessageInfo] = {}  # insertion order == UID order
        self._bodies: dict[int, _Body] = {}
        self._cache: dict[int, dict[str, str]] = {}
        self._saved: dict[int, float] = {}  # RFC 8514 save dates
        self.mailbox_id = new_mailbox_id()  # RFC 8474; RENAME keeps this object
        self._modseqs = ModSeqs()
        self._listeners = ModSeqListeners(self._modseqs)

    @property
    def highest_modseq(self) -> int:
        return self._modseqs.highest

    def _with_modseq(self, info: MessageInfo) -> MessageInfo:
        return with_modseq(info, self._modseqs.get(info.uid))

    # -- internal, used by writers and other folders --------------------------------

    def _append(self, body: _Body, flags: frozenset[str], internal_date: float | None,
                notify: bool = True, recent: bool = True) -> MessageInfo:
        uid = self.uid_next
        self.uid_next += 1
        info = MessageInfo(uid=uid, key=_new_key(), size=body.size, flags=flags,
                           internal_date=time.time() if internal_date is None else internal_date,
                           recent=recent)
        self._infos[uid] = info
        self._bodies[uid] = body.incref()
        self._saved[uid] = time.time()
        if notify:
            self._listeners.added(self, [info])
        return self._with_modseq(info)

    def _remove(self, uids: Sequence[int]) -> None:
        for uid in uids:
            del self._infos[uid]
            self._bodies.pop(uid).decref()
            self._cache.pop(uid, None)
            self._saved.pop(uid, None)

    def _drop_all(self) -> None:
        uids = list(self._infos)
        self._remove(uids)
        self._listeners.expunged(self, uids)

    # -- IFolder --------------------------------------------------------------------

    def messages(self) -> list[MessageInfo]:
        return [self._with_modseq(i) for i in self._infos.values()]

    def get(self, uid: int) -> MessageInfo | None:
        info = self._infos.get(uid)
        return None if info is None else self._with_modseq(info)

    def modseq_of(self, uid: int) -> int:
        return self._modseqs.get(uid)

    def changed_since(self, modseq: int) -> list[int]:
        return self._modseqs.changed_since(modseq)

    def expunged_since(self, modseq: int) -> list[int] | None:
        return self._modseqs.expunged_since(modseq)

    def refresh(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def open_message(self, uid: int) -> defer.Deferred[BinaryIO]:
        body = self._bodies.get(uid)
        if body is None:
            return defer.fail(NoSuchMessage(uid))
        return defer.succeed(body.open())

    def read_message(self, uid: int, offset: int = 0,
                     length: int | None = None) -> defer.Deferred[IMessageReader]:
        body = self._bodies.get(uid)
        if body is None:
            return defer.fail(NoSuchMessage(uid))
        return defer.succeed(reader_for(body.open(), body.size, offset, length))

    def set_flags(self, uids: Iterable[int], flags: Iterable[str],
                  mode: str) -> defer.Deferred[list[MessageInfo]]:
        try:
            wanted = normalize_flags(flags)
            result: list[MessageInfo] = []
            changed: list[MessageInfo] = []
            for uid in sorted(set(uids)):
                info = self._infos.get(uid)
                if info is None:
                    continue
                new = apply_mode(info.flags, wanted, mode)
                if new != info.flags:
                    info = replace(info, flags=new)
                    self._infos[uid] = info
                    changed.append(info)
                result.append(info)
        except StoreError:
            return defer.fail()
        self._listeners.changed(self, changed)
        return defer.succeed([self._with_modseq(i) for i in result])

    def expunge(self, uids: Iterable[int] | None = None) -> defer.Deferred[list[int]]:
        among = self._infos.keys() if uids is None else set(uids)
        gone = sorted(u for u in among
                      if u in self._infos and "\\Deleted" in self._infos[u].flags)
        self._remove(gone)
        self._listeners.expunged(self, gone)
        return defer.succeed(gone)

    def _copy_to(self, uids: Iterable[int], dest: IFolder) -> list[tuple[int, int]]:
        if not isinstance(dest, MemoryFolder) or not dest._account._has(dest):
            raise NoSuchFolder(getattr(dest, "name", dest))
        uids = sorted(set(uids))
        ids = email_ids(self, uids)  # RFC 8474: copies keep their EMAILID
        pairs: list[tuple[int, int]] = []
        added: list[MessageInfo] = []
        for uid in sorted(set(uids)):
            info = self._infos.get(uid)
            if info is None:
                continue
            new = dest._append(self._bodies[uid], info.flags, info.internal_date, notify=False)
            pairs.append((uid, new.uid))
            added.append(new)
        dest._listeners.added(dest, added)
        return carry(pairs, dest, ids)

    def copy(self, uids: Iterable[int], dest: IFolder) -> defer.Deferred[list[tuple[int, int]]]:
        try:
            return defer.succeed(self._copy_to(uids, dest))
        except StoreError:
            return defer.fail()

    def move(self, uids: Iterable[int], dest: IFolder) -> defer.Deferred[list[tuple[int, int]]]:
        try:
            pairs = self._copy_to(uids, dest)
        except StoreError:
            return defer.fail()
        gone = [src for src, _ in pairs]
        self._remove(gone)
        self._listeners.expunged(self, gone)
        return defer.succeed(pairs)

    def claim_recent(self) -> defer.Deferred[set[int]]:
        claimed: set[int] = set()
        for uid, info in self._infos.items():
            if info.recent:
                self._infos[uid] = replace(info, recent=False)
                claimed.add(uid)
        return defer.succeed(claimed)

    def add_listener(self, listener: IFolderListener) -> None:
        self._listeners.add(listener)

    def remove_listener(self, listener: IFolderListener) -> None:
        self._listeners.remove(listener)

    def save_dates(self, uids: Iterable[int]) -> defer.Deferred[dict[int, float]]:
        return defer.succeed({u: self._saved[u] for u in uids if u in self._saved})

    def get_cached(self, uid: int, key: str) -> str | None:
        return self._cache.get(uid, {}).get(key)

    def set_cached(self, uid: int, key: str, value: str) -> None:
        if uid in self._infos:
            self._cache.setdefault(uid, {})[key] = value


@implementer(IMailAccount)
class MemoryAccount:
    """Implements: IMailAccount."""

    def __init__(self, store: MemoryStore, user: str) -> None:
        self._store = store
        self.user = user
        self._folders: dict[str, MemoryFolder] = {}
        self._subscriptions: set[str] = set()
        self._make(INBOX)
        self._subscriptions.add(INBOX)
        for name, use in DEFAULT_SPECIAL_FOLDERS.items():
            self._make(name, use)
            self._subscriptions.add(name)

    def _make(self, name: str, special_use: str | None = None) -> MemoryFolder:
        folder = MemoryFolder(self, name, self._store._next_uid_validity(), special_use)
        self._folders[name] = folder
        return folder

    def _has(self, folder: MemoryFolder) -> bool:
        return self._folders.get(folder.name) is folder

    def _folder(self, name: str) -> MemoryFolder:
        folder = self._folders.get(canonical_folder(name))
        if folder is None:
            raise NoSuchFolder(name)
        return folder

    def new_message(self) -> IMessageWriter:
        return self._store.new_message()

    def append(self, name: str, message: IMessageWriter, flags: Iterable[str] = (),
               internal_date: float | None = None, recent: bool = True,
               ) -> defer.Deferred[tuple[int, int]]:
        return append_message(self, name, message, flags, internal_date, recent)

    def list_folders(self) -> defer.Deferred[list[str]]:
        names = sorted(n for n in self._folders if n != INBOX)
        return defer.succeed([INBOX, *names])

    def open_folder(self, name: str) -> defer.Deferred[IFolder]:
        try:
            return defer.succeed(self._folder(name))
        except StoreError:
            return defer.fail()

    def create_folder(self, name: str,
                      special_use: str | None = None) -> defer.Deferred[None]:
        try:
            canon = canonical_folder(name)
            if canon in self._folders:
                raise FolderExists(canon)
        except StoreError:
            return defer.fail()
        for parent in parents(canon):
            if parent not in self._folders:
                self._make(parent)
        self._make(canon, special_use)
        return defer.succeed(None)

    def delete_folder(self, name: str) -> defer.Deferred[None]:
        try:
            canon = canonical_folder(name)
            if canon == INBOX:
                raise InvalidFolderName("INBOX cannot be deleted")
            folder = self._folder(canon)
        except StoreError:
            return defer.fail()
        del self._folders[canon]
        folder._drop_all()
        return defer.succeed(None)

    def rename_folder(self, old: str, new: str) -> defer.Deferred[None]:
        try:
            src, dst = canonical_folder(old), canonical_folder(new)
            folder = self._folder(src)
            if dst in self._folders:
                raise FolderExists(dst)
            if dst == src or is_inferior(dst, src):
                raise InvalidFolderName(f"cannot rename {src} into itself")
        except StoreError:
            return defer.fail()
        for parent in parents(dst):
            if parent not in self._folders:
                self._make(parent)
        if src == INBOX:
            target = self._make(dst)
            folder.move(list(folder._infos), target)
            return defer.succeed(None)
        moving = [n for n in self._folders if n == src or is_inferior(n, src)]
        for name in moving:
            obj = self._folders.pop(name)
            obj.name = dst + name[len(src):]
            self._folders[obj.name] = obj
        return defer.succeed(None)

    def subscriptions(self) -> defer.Deferred[set[str]]:
        return defer.succeed(set(self._subscriptions))

    def subscribe(self, name: str) -> defer.Deferred[None]:
        try:
            self._subscriptions.add(canonical_folder(name))
        except StoreError:
            return defer.fail()
        return defer.succeed(None)

    def unsubscribe(self, name: str) -> defer.Deferred[None]:
        try:
            self._subscriptions.discard(canonical_folder(name))
        except StoreError:
            return defer.fail()
        return defer.succeed(None)


@implementer(IMailStore, IAccountListing)
class MemoryStore:
    """Implements: IMailStore and IAccountListing, entirely in process (bodies may
    spill to temp files)."""

    def __init__(self) -> None:
        self._accounts: dict[str, MemoryAccount] = {}
        self._last_validity = 0
        self._account_listeners = AccountListenerSet()

    def _next_uid_validity(self) -> int:
        self._last_validity = max(self._last_validity + 1, int(time.time()))
        return self._last_validity

    def _account(self, user: str) -> MemoryAccount:
        split_user(user)
        account = self._accounts.get(user)
        if account is None:
            account = self._accounts[user] = MemoryAccount(self, user)
            self._account_listeners.opened(user)
        return account

    def _target_folder(self, target: DeliveryTarget) -> MemoryFolder:
        return self._account(target.user)._folder(target.folder)

    def open_account(self, user: str) -> defer.Deferred[IMailAccount]:
        try:
            return defer.succeed(self._account(user))
        except StoreError:
            return defer.fail()

    def new_message(self) -> MemoryMessageWriter:
        return MemoryMessageWriter(self)

    def accounts(self) -> defer.Deferred[list[str]]:
        return defer.succeed(sorted(self._accounts))

    def add_account_listener(self, listener: IAccountListener) -> None:
        self._account_listeners.add(listener)

    def remove_account_listener(self, listener: IAccountListener) -> None:
        self._account_listeners.remove(listener)

    def start(self) -> defer.Deferred[None]:
        """Nothing survives a crash, so nothing is left to finish."""
        return defer.succeed(None)

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)
