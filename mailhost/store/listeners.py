"""Fan-out of folder change events to IFolderListeners, isolating their failures."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.logger import Logger

from mailhost.store.interfaces import IAccountListener, IFolder, IFolderListener, MessageInfo


class ListenerSet:
    """The listeners of one live folder; a failing listener never breaks the store."""

    log = Logger()

    def __init__(self) -> None:
        self._listeners: list[IFolderListener] = []

    def __len__(self) -> int:
        return len(self._listeners)

    def add(self, listener: IFolderListener) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)

    def remove(self, listener: IFolderListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, method: str, folder: IFolder,
              arg: list[MessageInfo] | list[int]) -> None:
        if not arg:
            return
        for listener in list(self._listeners):
            try:
                getattr(listener, method)(folder, arg)
            except Exception:
                self.log.failure("folder listener {method} failed", method=method)

    def added(self, folder: IFolder, infos: Sequence[MessageInfo]) -> None:
        self._emit("messages_added", folder, list(infos))

    def changed(self, folder: IFolder, infos: Sequence[MessageInfo]) -> None:
        self._emit("flags_changed", folder, list(infos))

    def expunged(self, folder: IFolder, uids: Sequence[int]) -> None:
        self._emit("messages_expunged", folder, list(uids))


class AccountListenerSet:
    """The store's IAccountListeners; a failing listener never breaks the store."""

    log = Logger()

    def __init__(self) -> None:
        self._listeners: list[IAccountListener] = []

    def add(self, listener: IAccountListener) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)

    def remove(self, listener: IAccountListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def opened(self, user: str) -> None:
        for listener in list(self._listeners):
            try:
                listener.account_opened(user)
            except Exception:
                self.log.failure("account listener failed for {user}", user=user)
