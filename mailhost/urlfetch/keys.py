"""URLAUTH mailbox access keys (RFC 4467 section 3): one secret per (user, mailbox).

A user's keys live in one file, ``<dir>/<sha256(user)[:32]>.json`` (mode 0600 in a
0700 directory), as ``{mailbox id: hex key}``. Keys are indexed by the folder's RFC 8474
MAILBOXID, so a RENAME keeps a folder's key (its old URLs name a mailbox that is gone and
stop working; new ones verify) and a folder deleted and created again under the same name
gets a new key (the old URLs stop working), as RFC 4467 asks. ``has_keys`` lets a URL's
owner be checked before any account is opened for that name.
Files are read and written in a worker thread (write to a temporary file, fsync,
rename), one change at a time; what was read is kept in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets

from twisted.internet import defer, threads

KEY_BYTES = 32

_instances: dict[str, UrlAuthKeys] = {}


def keys_in(directory: str) -> UrlAuthKeys:
    """The one ``UrlAuthKeys`` of ``directory`` in this process (shared by sessions)."""
    found = _instances.get(directory)
    if found is None:
        found = _instances[directory] = UrlAuthKeys(directory)
    return found


class UrlAuthKeys:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._keys: dict[str, dict[str, str]] = {}
        self._lock = defer.DeferredLock()

    def path(self, user: str) -> str:
        name = hashlib.sha256(user.lower().encode("utf-8")).hexdigest()[:32]
        return os.path.join(self.directory, name + ".json")

    def _read(self, user: str) -> dict[str, str]:
        try:
            with open(self.path(user), encoding="ascii") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _write(self, user: str, keys: dict[str, str]) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = self.path(user)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(keys, sort_keys=True).encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    async def _loaded(self, user: str) -> dict[str, str]:
        user = user.lower()
        if user not in self._keys:
            self._keys[user] = await threads.deferToThread(self._read, user)
        return self._keys[user]

    async def _key(self, user: str, mailbox_id: str, create: bool) -> bytes | None:
        await self._lock.acquire()
        try:
            keys = await self._loaded(user)
            if mailbox_id not in keys:
                if not create:
                    return None
                changed = dict(keys, **{mailbox_id: secrets.token_hex(KEY_BYTES)})
                await threads.deferToThread(self._write, user, changed)
                self._keys[user.lower()] = keys = changed
            return bytes.fromhex(keys[mailbox_id])
        finally:
            self._lock.release()

    async def _has_keys(self, user: str) -> bool:
        await self._lock.acquire()
        try:
            return bool(await self._loaded(user))
        finally:
            self._lock.release()

    def has_keys(self, user: str) -> defer.Deferred[bool]:
        """Deferred: ``user`` has a mailbox access key (so has made a URLAUTH URL)."""
        return defer.Deferred.fromCoroutine(self._has_keys(user))

    def key(self, user: str, mailbox_id: str, create: bool = False) -> defer.Deferred:
        """Deferred firing with the key of ``user``'s mailbox (made now if ``create``),
        or None."""
        return defer.Deferred.fromCoroutine(self._key(user, mailbox_id, create))

    async def _reset(self, user: str, mailbox_id: str | None) -> None:
        await self._lock.acquire()
        try:
            keys = await self._loaded(user)
            if mailbox_id is None:
                changed: dict[str, str] = {}
            else:
                changed = dict(keys, **{mailbox_id: secrets.token_hex(KEY_BYTES)})
            await threads.deferToThread(self._write, user, changed)
            self._keys[user.lower()] = changed
        finally:
            self._lock.release()

    def reset(self, user: str, mailbox_id: str | None = None) -> defer.Deferred:
        """RESETKEY: a new key for one mailbox, or (None) every key of ``user`` dropped;
        URLs made with the old keys stop working. Deferred."""
        return defer.Deferred.fromCoroutine(self._reset(user, mailbox_id))
