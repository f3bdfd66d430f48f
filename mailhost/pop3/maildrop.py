"""One POP3 session's view of INBOX: a snapshot taken at login, deletion marks, the UPDATE commit.

RFC 1939 numbers messages 1..n for the whole session, so the snapshot is frozen at
login: mail delivered meanwhile waits for the next session, and a message removed by
another program mid-session just fails to open. Messages already flagged ``\\Deleted``
(the ``flag`` policy, or an IMAP user who has not expunged yet) are left out.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal, NamedTuple

from twisted.internet import defer

from mailhost.store.interfaces import IFolder, IIndexedFolder, IMessageReader, MessageInfo

DeletePolicy = Literal["expunge", "flag"]


class PopMessage(NamedTuple):
    """What a POP3 session needs of a message: no date, which a store may have to read
    from the file (a stat per message at login)."""

    uid: int
    size: int
    flags: frozenset[str]


def uidl_for(uid_validity: int, uid: int) -> str:
    """The unique-id listing: stable across sessions and restarts, blind to flags (RFC 1939 7)."""
    return "%08x%08x" % (uid_validity, uid)


class Maildrop:
    """Message numbering, sizes, UIDLs and deletion marks for one session."""

    def __init__(self, folder: IFolder, infos: list[MessageInfo] | list[PopMessage]) -> None:
        self.folder = folder
        self._infos: Sequence[MessageInfo | PopMessage] = infos
        self._deleted: set[int] = set()  # message numbers marked by DELE
        self._ahead: tuple[int, defer.Deferred[IMessageReader]] | None = None  # (number, opening)

    @classmethod
    async def open(cls, folder: IFolder) -> Maildrop:
        """Rescan the folder, then freeze its visible messages."""
        await folder.refresh()
        if not IIndexedFolder.providedBy(folder):
            return cls(folder, [i for i in folder.messages() if "\\Deleted" not in i.flags])
        cols = folder.columns()  # a compact index: no MessageInfo per message
        return cls(folder, [m for m in map(PopMessage, cols.uids, cols.sizes, cols.flags)
                            if "\\Deleted" not in m.flags])

    def get(self, number: int) -> MessageInfo | PopMessage | None:
        """The message with this number, or None when out of range or marked deleted."""
        if 1 <= number <= len(self._infos) and number not in self._deleted:
            return self._infos[number - 1]
        return None

    def live(self) -> Iterator[tuple[int, MessageInfo | PopMessage]]:
        """(number, info) of every message not marked deleted."""
        for number, info in enumerate(self._infos, 1):
            if number not in self._deleted:
                yield number, info

    def stat(self) -> tuple[int, int]:
        """(count, octets) of the messages not marked deleted."""
        count = octets = 0
        for _number, info in self.live():
            count += 1
            octets += info.size
        return count, octets

    def open_message(self, number: int) -> defer.Deferred[IMessageReader]:
        """Open message ``number``: a Deferred firing with its reader, or NoSuchMessage.

        Clients RETR in order, so the next live message is opened (and its first chunk
        read) in the background: the store's open is a thread hop, and hiding it behind
        the current transfer keeps a session of many small messages from waiting on it
        each time.
        """
        if self._ahead is not None and self._ahead[0] == number:
            opening = self._ahead[1]
            self._ahead = None
        else:
            self.discard_prefetch()
            opening = self._open(number)
        following = next((n for n in range(number + 1, len(self._infos) + 1)
                          if n not in self._deleted), None)
        if following is not None:
            self._ahead = (following, self._open(following))
        return opening

    def _open(self, number: int) -> defer.Deferred[IMessageReader]:
        info = self._infos[number - 1]

        def started(reader: IMessageReader) -> IMessageReader:
            reader.start()
            return reader

        return self.folder.read_message(info.uid).addCallback(started)

    def discard_prefetch(self) -> None:
        """Close the message opened ahead, if any (it may still be opening)."""
        if self._ahead is not None:
            _number, opening = self._ahead
            self._ahead = None
            opening.addCallbacks(lambda reader: reader.close(), lambda _failure: None)

    def uidl(self, info: MessageInfo | PopMessage) -> str:
        return uidl_for(self.folder.uid_validity, info.uid)

    def delete(self, number: int) -> None:
        """Mark a live message (see ``get``) for deletion at QUIT."""
        self._deleted.add(number)

    def reset(self) -> None:
        self._deleted.clear()

    def commit(self, policy: DeletePolicy) -> defer.Deferred[Any]:
        """Apply the DELE marks (the UPDATE state); fires once they are durable in the store."""
        return defer.Deferred.fromCoroutine(self._commit(policy))

    async def _commit(self, policy: DeletePolicy) -> int:
        uids = sorted(self._infos[n - 1].uid for n in self._deleted)
        if not uids:
            return 0
        if policy == "flag":
            await self.folder.set_flags(uids, {"\\Deleted", "\\Seen"}, "add")
            return len(uids)
        await self.folder.set_flags(uids, {"\\Deleted"}, "add")
        removed = await self.folder.expunge(uids)
        return len(removed)
