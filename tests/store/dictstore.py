"""DictStore: a third IMailStore, written here in the tests, from the contract alone.

It is the proof that ``mailhost.store.interfaces`` says everything the protocols use:
it passes the contract suite (tests/store/test_contract.py) and serves SMTP, POP3 and
IMAP through ``makeService(config, store=DictStore())`` (tests/e2e/test_foreign_store.py)
with no protocol knowing it. It shares no code with MemoryStore or MaildirStore: it
uses only the contract (interfaces, the ``MessageReader`` every store hands out) and
the shared name and flag rules (``store.names``, ``store.flags``), which every store
must agree on anyway.

Deliberately plain: bodies are bytes in dicts (a big one spills to a file, so a 20 MB
message costs no memory), it offers no ``IIndexedFolder`` (protocols take their
fallback path), and everything answers with an already-fired Deferred.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from itertools import count

from twisted.internet import defer
from zope.interface import implementer

from mailhost.store import objectid
from mailhost.store.flags import apply_mode, normalize_flags
from mailhost.store.interfaces import (
    DEFAULT_SPECIAL_FOLDERS,
    DeliveryTarget,
    FolderExists,
    IFolder,
    IMailAccount,
    IMailStore,
    IMessageWriter,
    InvalidFolderName,
    MessageInfo,
    NoSuchFolder,
    NoSuchMessage,
    StoreError,
)
from mailhost.store.names import INBOX, canonical_folder, is_inferior, parents, split_user
from mailhost.store.reader import reader_for

SPILL = 1024 * 1024  # bodies above this live in a file
_bare_lf = re.compile(rb"(?<!\r)\n")
_serial = count(1)


def _succeed_or_fail(fn, *args):
    try:
        return defer.succeed(fn(*args))
    except StoreError:
        return defer.fail()


class _Body:
    """The bytes of one message: in memory, or a file of the store's spill directory."""

    def __init__(self, data: bytes | None, path: str | None, size: int) -> None:
        self.data, self.path, self.size = data, path, size

    def open(self):
        if self.data is not None:
            return io.BytesIO(self.data)
        return open(self.path, "rb")  # noqa: SIM115 - the reader closes it


@implementer(IMessageWriter)
class DictWriter:
    """Implements: IMessageWriter. CRLF rule of the contract: a bare LF becomes CRLF, a
    CR is kept (a CR that ends one write may pair with the next write's LF)."""

    def __init__(self, store: DictStore) -> None:
        self._store = store
        self._buf = bytearray()
        self._file = None
        self._path: str | None = None
        self._cr = False  # the last write ended with a CR
        self._done = False
        self.size = 0

    def write(self, data: bytes) -> None:
        if self._done:
            raise StoreError("write after commit/abort")
        if not data:
            return
        if self._cr and data[:1] == b"\n":
            out = b"\n" + _bare_lf.sub(b"\r\n", data[1:])
        else:
            out = _bare_lf.sub(b"\r\n", data)
        self._cr = data[-1:] == b"\r"
        self.size += len(out)
        if self._file is not None:
            self._file.write(out)
            return
        self._buf += out
        if len(self._buf) > SPILL:
            fd, self._path = tempfile.mkstemp(dir=self._store.spill_dir)
            self._file = os.fdopen(fd, "wb")
            self._file.write(self._buf)
            self._buf = bytearray()

    def commit(self, targets: Sequence[DeliveryTarget]):
        if self._done:
            return defer.fail(StoreError("commit after commit/abort"))
        try:
            folders = [self._store._account(t.user)._get(t.folder) for t in targets]
        except StoreError:
            return defer.fail()
        self._done = True
        if self._file is not None:
            self._file.close()
            body = _Body(None, self._path, self.size)
        else:
            body = _Body(bytes(self._buf), None, self.size)
        self._buf = bytearray()
        uids = [folder._add(body, normalize_flags(t.flags), t.internal_date,
                            recent=t.recent).uid
                for folder, t in zip(folders, targets, strict=True)]
        return defer.succeed(uids)

    def abort(self) -> None:
        if not self._done:
            self._done = True
            if self._file is not None:
                self._file.close()
                os.unlink(self._path)


class _Listeners:
    def __init__(self) -> None:
        self.all: list = []

    def tell(self, method: str, folder, items) -> None:
        if items:
            for listener in list(self.all):
                getattr(listener, method)(folder, items)


@implementer(IFolder)
class DictFolder:
    """Implements: IFolder (and no IIndexedFolder)."""

    def __init__(self, name: str, validity: int, special_use: str | None) -> None:
        self.name = name
        self.uid_validity = validity
        self.uid_next = 1
        self.special_use = special_use
        self._infos: dict[int, MessageInfo] = {}
        self._bodies: dict[int, _Body] = {}
        self._cache: dict[int, dict[str, str]] = {}
        self._saved: dict[int, float] = {}
        self.mailbox_id = f"dict{next(_serial)}"  # RFC 8474, kept by RENAME
        self._listeners = _Listeners()
        self._deleted = False
        self.highest_modseq = 1  # positive even for an empty folder (RFC 7162)
        self._gone: list[tuple[int, int]] = []  # (modseq, uid), every expunge kept

    def _bump(self, uids: Iterable[int]) -> int:
        """A new mod-sequence for one change of these messages."""
        self.highest_modseq += 1
        for uid in uids:
            if uid in self._infos:
                self._infos[uid] = replace(self._infos[uid], modseq=self.highest_modseq)
        return self.highest_modseq

    def modseq_of(self, uid: int) -> int:
        info = self._infos.get(uid)
        return 0 if info is None else info.modseq

    def changed_since(self, modseq: int) -> list[int]:
        return sorted(u for u, i in self._infos.items() if i.modseq > modseq)

    def expunged_since(self, modseq: int) -> list[int] | None:
        return sorted(u for m, u in self._gone if m > modseq)

    def _add(self, body: _Body, flags: frozenset[str], date: float | None,
             notify: bool = True, recent: bool = True) -> MessageInfo:
        uid = self.uid_next
        self.uid_next += 1
        info = MessageInfo(uid, f"dict-{next(_serial)}", body.size, flags,
                           time.time() if date is None else date, recent=recent)
        self._infos[uid] = info
        self._bodies[uid] = body
        self._saved[uid] = time.time()
        if notify:
            self._bump([uid])
            info = self._infos[uid]
            self._listeners.tell("messages_added", self, [info])
        return info

    def _drop(self, uids: Sequence[int]) -> None:
        if uids:
            self.highest_modseq += 1
        for uid in uids:
            del self._infos[uid], self._bodies[uid], self._saved[uid]
            self._cache.pop(uid, None)
            self._gone.append((self.highest_modseq, uid))
        self._listeners.tell("messages_expunged", self, list(uids))

    def messages(self) -> list[MessageInfo]:
        return [self._infos[u] for u in sorted(self._infos)]

    def get(self, uid: int) -> MessageInfo | None:
        return self._infos.get(uid)

    def refresh(self):
        return defer.succeed(None)

    def open_message(self, uid: int):
        if uid not in self._bodies:
            return defer.fail(NoSuchMessage(uid))
        return defer.succeed(self._bodies[uid].open())

    def read_message(self, uid: int, offset: int = 0, length: int | None = None):
        if uid not in self._bodies:
            return defer.fail(NoSuchMessage(uid))
        body = self._bodies[uid]
        return defer.succeed(reader_for(body.open(), body.size, offset, length))

    def set_flags(self, uids: Iterable[int], flags: Iterable[str], mode: str):
        def run():
            wanted = normalize_flags(flags)
            result, changed = [], []
            for uid in sorted(set(uids)):
                info = self._infos.get(uid)
                if info is None:
                    continue
                new = apply_mode(info.flags, wanted, mode)
                if new != info.flags:
                    info = self._infos[uid] = replace(info, flags=new)
                    changed.append(uid)
                result.append(uid)
            if changed:
                self._bump(changed)
            self._listeners.tell("flags_changed", self, [self._infos[u] for u in changed])
            return [self._infos[u] for u in result]

        return _succeed_or_fail(run)

    def expunge(self, uids: Iterable[int] | None = None):
        among = set(self._infos) if uids is None else set(uids)
        gone = sorted(u for u in among
                      if u in self._infos and "\\Deleted" in self._infos[u].flags)
        self._drop(gone)
        return defer.succeed(gone)

    def _copy(self, uids: Iterable[int], dest: IFolder) -> list[tuple[int, int]]:
        if not isinstance(dest, DictFolder) or dest._deleted:
            raise NoSuchFolder(dest.name)
        pairs, added = [], []
        uids = sorted(set(uids))
        ids = objectid.email_ids(self, uids)
        for uid in uids:
            if uid in self._infos:
                info = self._infos[uid]
                new = dest._add(self._bodies[uid], info.flags, info.internal_date, False)
                pairs.append((uid, new.uid))
                added.append(new.uid)
        if added:
            dest._bump(added)
        dest._listeners.tell("messages_added", dest, [dest._infos[u] for u in added])
        return objectid.carry(pairs, dest, ids)

    def copy(self, uids: Iterable[int], dest: IFolder):
        return _succeed_or_fail(self._copy, uids, dest)

    def move(self, uids: Iterable[int], dest: IFolder):
        def run():
            pairs = self._copy(uids, dest)
            self._drop([src for src, _ in pairs])
            return pairs

        return _succeed_or_fail(run)

    def claim_recent(self):
        claimed = {u for u, i in self._infos.items() if i.recent}
        for uid in claimed:
            self._infos[uid] = replace(self._infos[uid], recent=False)
        return defer.succeed(claimed)

    def add_listener(self, listener) -> None:
        self._listeners.all.append(listener)

    def remove_listener(self, listener) -> None:
        if listener in self._listeners.all:
            self._listeners.all.remove(listener)

    def save_dates(self, uids: Iterable[int]):
        return defer.succeed({u: self._saved[u] for u in uids if u in self._saved})

    def get_cached(self, uid: int, key: str) -> str | None:
        return self._cache.get(uid, {}).get(key)

    def set_cached(self, uid: int, key: str, value: str) -> None:
        if uid in self._infos:
            self._cache.setdefault(uid, {})[key] = value


@implementer(IMailAccount)
class DictAccount:
    """Implements: IMailAccount."""

    def __init__(self, store: DictStore, user: str) -> None:
        self._store = store
        self.user = user
        self._folders: dict[str, DictFolder] = {}
        self._subs: set[str] = {INBOX, *DEFAULT_SPECIAL_FOLDERS}
        self._make(INBOX)
        for name, use in DEFAULT_SPECIAL_FOLDERS.items():
            self._make(name, use)

    def _make(self, name: str, special_use: str | None = None) -> DictFolder:
        folder = self._folders[name] = DictFolder(name, self._store._validity(), special_use)
        return folder

    def _get(self, name: str) -> DictFolder:
        canon = canonical_folder(name)
        if canon not in self._folders:
            raise NoSuchFolder(name)
        return self._folders[canon]

    def list_folders(self):
        return defer.succeed([INBOX, *sorted(n for n in self._folders if n != INBOX)])

    def open_folder(self, name: str):
        return _succeed_or_fail(self._get, name)

    def create_folder(self, name: str, special_use: str | None = None):
        def run():
            canon = canonical_folder(name)
            if canon in self._folders:
                raise FolderExists(canon)
            for parent in parents(canon):
                if parent not in self._folders:
                    self._make(parent)
            self._make(canon, special_use)

        return _succeed_or_fail(run)

    def delete_folder(self, name: str):
        def run():
            canon = canonical_folder(name)
            if canon == INBOX:
                raise InvalidFolderName("INBOX cannot be deleted")
            folder = self._get(canon)
            del self._folders[canon]
            folder._deleted = True
            folder._drop(sorted(folder._infos))

        return _succeed_or_fail(run)

    def rename_folder(self, old: str, new: str):
        def run():
            src, dst = canonical_folder(old), canonical_folder(new)
            folder = self._get(src)
            if dst in self._folders:
                raise FolderExists(dst)
            if dst == src or is_inferior(dst, src):
                raise InvalidFolderName(f"cannot rename {src} into itself")
            for parent in parents(dst):
                if parent not in self._folders:
                    self._make(parent)
            if src == INBOX:  # RFC 3501: the messages move, INBOX stays (empty)
                folder._copy(list(folder._infos), self._make(dst))
                folder._drop(sorted(folder._infos))
                return
            for name in [n for n in self._folders if n == src or is_inferior(n, src)]:
                moving = self._folders.pop(name)
                moving.name = dst + name[len(src):]
                self._folders[moving.name] = moving

        return _succeed_or_fail(run)

    def subscriptions(self):
        return defer.succeed(set(self._subs))

    def subscribe(self, name: str):
        return _succeed_or_fail(lambda: self._subs.add(canonical_folder(name)))

    def unsubscribe(self, name: str):
        return _succeed_or_fail(lambda: self._subs.discard(canonical_folder(name)))

    def new_message(self) -> DictWriter:
        return DictWriter(self._store)

    def append(self, name: str, message, flags=(), internal_date=None, recent=True):
        try:
            folder = self._get(name)
        except StoreError:
            message.abort()
            return defer.fail()
        target = DeliveryTarget(self.user, folder.name, frozenset(flags), internal_date,
                                recent=recent)
        d = message.commit([target])
        d.addCallback(lambda uids: (folder.uid_validity, uids[0]))
        return d


@implementer(IMailStore)
class DictStore:
    """Implements: IMailStore, in dicts."""

    def __init__(self) -> None:
        self._accounts: dict[str, DictAccount] = {}
        self._last_validity = 0
        self._spill = tempfile.TemporaryDirectory(prefix="dictstore-")
        self.spill_dir = self._spill.name

    def _validity(self) -> int:
        self._last_validity = max(self._last_validity + 1, int(time.time()))
        return self._last_validity

    def _account(self, user: str) -> DictAccount:
        split_user(user)  # the shared user-name rule: StoreError for a bad one
        if user not in self._accounts:
            self._accounts[user] = DictAccount(self, user)
        return self._accounts[user]

    def open_account(self, user: str):
        return _succeed_or_fail(self._account, user)

    def new_message(self) -> DictWriter:
        return DictWriter(self)

    def start(self):
        return defer.succeed(None)

    def close(self):
        self._spill.cleanup()
        return defer.succeed(None)
