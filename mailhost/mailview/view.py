"""StoreMailView: the operator's view (``IMailView``) over any store with ``IAccountListing``.

It uses only the store contract: accounts from ``IAccountListing``, folders and
messages from ``IMailAccount``/``IFolder``, bytes through ``IFolder.read_message`` (the
store's reader decides what runs in the thread pool; parsers run there through
``IMessageReader.call``), so it works on the Maildir and memory stores alike and never
blocks the reactor.

- **Listing** reads the index (no file) to filter by mailbox, domain, folder and date
  and to order newest first; then reads the header block of each candidate, in that
  order, until ``limit`` matches, and bodies only for a body (or ``text``) search.
  A summary's header fields are kept in the folder's metadata cache
  (``IFolder.set_cached``), so a second listing opens no file.
- **Deleting** is ``\\Deleted`` plus ``expunge`` of that UID only.
- **Release** hands the message to ``mailhost.mailview.release`` (the relay's own SMTP
  client).
- **Subscribing** watches every folder of every account (``IFolderListener``) and
  hears of new accounts from the store (``IAccountListener``); it starts with the
  first subscriber and stops with the last (or ``close``). An account that was not
  there when watching started is new, so everything in it is announced when its
  folders are first watched: its first message may land before they are.

Built by whoever composes the host (``mailhost.service``, the test host); nothing
registers itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailhost.mailview.ids import MessageRef, decode_id, encode_id
from mailhost.mailview.interfaces import IMailView, MessageQuery, MessageSummary, NoSuchMessageId
from mailhost.mailview.parsing import HEADER_LIMIT, body_text, header_block, parse_header_fields
from mailhost.mailview.query import (
    body_matches,
    date_matches,
    header_matches,
    mailbox_matches,
    needs_body,
)
from mailhost.store.interfaces import (
    IAccountListener,
    IAccountListing,
    IFolder,
    IFolderListener,
    IIndexedFolder,
    IMailStore,
    MessageInfo,
    NoSuchFolder,
    NoSuchMessage,
    StoreError,
)
from mailhost.store.names import canonical_folder
from mailhost.store.reader import read_all

log = Logger()

#: The folder-cache key of a summary's header fields (JSON).
CACHE_KEY = "mailview.summary"

Listener = Callable[[MessageSummary], None]


@dataclass(frozen=True)
class _Candidate:
    mailbox: str
    folder: IFolder
    info: MessageInfo


def _received(info: MessageInfo) -> datetime:
    return datetime.fromtimestamp(info.internal_date, tz=UTC)


@implementer(IFolderListener)
class _FolderWatch:
    """Implements: IFolderListener; announces a watched folder's new messages."""

    def __init__(self, view: StoreMailView, mailbox: str) -> None:
        self.view = view
        self.mailbox = mailbox

    def messages_added(self, folder: IFolder, infos: Sequence[MessageInfo]) -> None:
        for info in infos:
            self.view._announce(self.mailbox, folder, info)

    def flags_changed(self, folder: IFolder, infos: Sequence[MessageInfo]) -> None:
        pass

    def messages_expunged(self, folder: IFolder, uids: Sequence[int]) -> None:
        pass


@implementer(IAccountListener)
class _AccountWatch:
    """Implements: IAccountListener; starts watching each account the store opens."""

    def __init__(self, view: StoreMailView) -> None:
        self.view = view

    def account_opened(self, user: str) -> None:
        self.view._account_opened(user)


@implementer(IMailView)
class StoreMailView:
    """Implements: IMailView over ``store`` (an ``IMailStore`` that also provides
    ``IAccountListing``). ``hostname`` is the EHLO name of ``release``; ``reactor``
    runs its connections and timers (the global reactor by default)."""

    def __init__(self, store: IMailStore, *, hostname: str = "localhost",
                 reactor: Any = None) -> None:
        if not IAccountListing.providedBy(store):
            raise TypeError(f"{type(store).__name__} cannot list its accounts "
                            "(IAccountListing), so it has no mail view")
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.store = store
        self._listing = cast(IAccountListing, store)
        # Accounts seen so far: a store never removes one, so an id naming one of
        # these needs no listing to be looked up (the Maildir listing scans a tree).
        self._known: set[str] = set()
        self.hostname = hostname
        self.reactor = reactor
        self._listeners: list[Listener] = []
        self._account_watch: _AccountWatch | None = None
        # mailbox -> [(folder, listener)] while anyone subscribes.
        self._watched: dict[str, list[tuple[IFolder, _FolderWatch]]] = {}
        self._announcing: defer.Deferred[None] = defer.succeed(None)
        # Accounts opened while the first listing of a subscription runs: new ones
        # unless that listing names them.
        self._opened_early: list[str] | None = None

    # -- reading --------------------------------------------------------------------

    def mailboxes(self) -> defer.Deferred[list[str]]:
        return defer.Deferred.fromCoroutine(self._accounts())

    async def _accounts(self) -> list[str]:
        users: list[str] = await self._listing.accounts()
        self._known.update(users)
        return users

    def messages(self, query: MessageQuery | None = None) -> defer.Deferred[list[MessageSummary]]:
        return defer.Deferred.fromCoroutine(self._messages(query or MessageQuery()))

    def summary(self, message_id: str) -> defer.Deferred[MessageSummary]:
        async def find() -> MessageSummary:
            ref = decode_id(message_id)
            folder, info = await self._locate(ref, message_id)
            return await self._summary(ref.mailbox, folder, info)

        return defer.Deferred.fromCoroutine(find())

    def raw(self, message_id: str) -> defer.Deferred[bytes]:
        async def read() -> bytes:
            ref = decode_id(message_id)
            folder, info = await self._locate(ref, message_id)
            try:
                reader = await folder.read_message(info.uid)
            except NoSuchMessage:
                raise NoSuchMessageId(message_id) from None
            return await read_all(reader)

        return defer.Deferred.fromCoroutine(read())

    async def _locate(self, ref: MessageRef, message_id: str) -> tuple[IFolder, MessageInfo]:
        """The live folder and index entry of ``ref``; NoSuchMessageId if it is gone."""
        # open_account would make a missing account: look it up first.
        if ref.mailbox not in self._known and ref.mailbox not in await self._accounts():
            raise NoSuchMessageId(message_id)
        try:
            account = await self.store.open_account(ref.mailbox)
            folder = await account.open_folder(ref.folder)
        except StoreError:
            raise NoSuchMessageId(message_id) from None
        if folder.uid_validity != ref.uid_validity:
            raise NoSuchMessageId(message_id)
        info = folder.get(ref.uid)
        if info is None:
            await folder.refresh()
            info = folder.get(ref.uid)
        if info is None:
            raise NoSuchMessageId(message_id)
        return folder, info

    async def _candidates(self, query: MessageQuery) -> list[_Candidate]:
        """Every message the index lets through (mailbox, domain, folder, date),
        newest first; no message file is opened."""
        wanted_folder = None if query.folder is None else canonical_folder(query.folder)
        found: list[_Candidate] = []
        for mailbox in await self._accounts():
            if not mailbox_matches(query, mailbox):
                continue
            account = await self.store.open_account(mailbox)
            names = await account.list_folders()
            for name in names:
                if wanted_folder is not None and name != wanted_folder:
                    continue
                try:
                    folder = await account.open_folder(name)
                except NoSuchFolder:
                    continue  # deleted meanwhile
                await folder.refresh()
                if IIndexedFolder.providedBy(folder):
                    # Dates not read yet (files adopted in bulk) are read here, in
                    # the pool, not one stat at a time on the reactor by messages().
                    await folder.fill_dates()
                found.extend(_Candidate(mailbox, folder, info) for info in folder.messages()
                             if date_matches(query, _received(info)))
        found.sort(key=lambda c: (c.info.internal_date, c.mailbox, c.folder.name, c.info.uid),
                   reverse=True)
        return found

    async def _messages(self, query: MessageQuery) -> list[MessageSummary]:
        out: list[MessageSummary] = []
        if query.limit is not None and query.limit <= 0:
            return out
        for cand in await self._candidates(query):
            try:
                summary = await self._summary(cand.mailbox, cand.folder, cand.info)
            except NoSuchMessage:
                continue  # expunged while we listed
            if not header_matches(query, summary):
                continue
            if needs_body(query, summary):
                try:
                    body = await self._body(cand.folder, cand.info)
                except NoSuchMessage:
                    continue
                if not body_matches(query, summary, body):
                    continue
            out.append(summary)
            if query.limit is not None and len(out) >= query.limit:
                break
        return out

    async def _summary(self, mailbox: str, folder: IFolder, info: MessageInfo) -> MessageSummary:
        cached = folder.get_cached(info.uid, CACHE_KEY)
        if cached is not None:
            sender, from_, to, subject = json.loads(cached)
        else:
            reader = await folder.read_message(info.uid, 0, HEADER_LIMIT)
            head = header_block(await read_all(reader))
            fields = parse_header_fields(head)
            sender, from_, to, subject = fields.sender, fields.from_, list(fields.to), fields.subject
            folder.set_cached(info.uid, CACHE_KEY, json.dumps([sender, from_, to, subject]))
        ref = MessageRef(mailbox, folder.name, folder.uid_validity, info.uid)
        return MessageSummary(id=encode_id(ref), mailbox=mailbox, folder=folder.name,
                              uid=info.uid, size=info.size, received=_received(info),
                              sender=sender, from_=from_, to=tuple(to), subject=subject,
                              flags=info.flags)

    async def _body(self, folder: IFolder, info: MessageInfo) -> str:
        reader = await folder.read_message(info.uid)
        try:
            return await reader.call(body_text)  # type: ignore[no-any-return]
        finally:
            reader.close()

    # -- changing -------------------------------------------------------------------

    def delete(self, message_id: str) -> defer.Deferred[None]:
        async def remove() -> None:
            ref = decode_id(message_id)
            folder, info = await self._locate(ref, message_id)
            await self._expunge(folder, [info.uid])

        return defer.Deferred.fromCoroutine(remove())

    async def _expunge(self, folder: IFolder, uids: list[int]) -> int:
        await folder.set_flags(uids, ["\\Deleted"], "add")
        gone = await folder.expunge(uids)
        return len(gone)

    def purge(self, query: MessageQuery | None = None) -> defer.Deferred[int]:
        async def remove() -> int:
            q = query or MessageQuery()
            if (q.sender, q.recipient, q.subject, q.body, q.text, q.limit) == (None,) * 6:
                targets = await self._candidates(q)  # no header needed: index only
                uids_of = [(c.folder, c.info.uid) for c in targets]
            else:
                found = await self._messages(q)
                live = {(s.mailbox, s.folder): s for s in found}
                uids_of = []
                for (mailbox, name), _ in live.items():
                    account = await self.store.open_account(mailbox)
                    folder = await account.open_folder(name)
                    uids_of.extend((folder, s.uid) for s in found
                                   if (s.mailbox, s.folder) == (mailbox, name))
            by_folder: dict[int, tuple[IFolder, list[int]]] = {}
            for folder, uid in uids_of:
                by_folder.setdefault(id(folder), (folder, []))[1].append(uid)
            count = 0
            for folder, uids in by_folder.values():
                count += await self._expunge(folder, uids)
            return count

        return defer.Deferred.fromCoroutine(remove())

    def release(self, message_id: str, endpoint: str, recipients: Sequence[str] | None = None,
                sender: str | None = None) -> defer.Deferred[None]:
        from mailhost.mailview.release import release_message

        async def send() -> None:
            ref = decode_id(message_id)
            folder, info = await self._locate(ref, message_id)
            summary = await self._summary(ref.mailbox, folder, info)
            try:
                reader = await folder.read_message(info.uid)
            except NoSuchMessage:
                raise NoSuchMessageId(message_id) from None
            await release_message(
                reader, endpoint,
                sender=sender if sender is not None else (summary.sender or ""),
                recipients=list(recipients) if recipients else [ref.mailbox],
                hostname=self.hostname, reactor=self.reactor)

        return defer.Deferred.fromCoroutine(send())

    # -- new arrivals ---------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        if self._account_watch is None:
            self._account_watch = _AccountWatch(self)
            self._listing.add_account_listener(self._account_watch)
            self._opened_early = []
            d = self.mailboxes()

            def watch_all(users: list[str]) -> None:
                early, self._opened_early = self._opened_early or [], None
                for user in users:
                    self._watch_account(user, since=None)
                for user in early:  # not listed: made after watching began
                    self._watch_account(user, since=0.0)

            d.addCallback(watch_all)
            d.addErrback(lambda f: log.failure("listing accounts to watch failed", f))

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)
            if not self._listeners:
                self.close()

        return unsubscribe

    def close(self) -> None:
        """Stop watching (every subscriber is dropped); the view itself stays usable."""
        self._listeners = []
        self._opened_early = None
        if self._account_watch is not None:
            self._listing.remove_account_listener(self._account_watch)
            self._account_watch = None
        watched, self._watched = self._watched, {}
        for pairs in watched.values():
            for folder, watch in pairs:
                folder.remove_listener(watch)

    def _account_opened(self, user: str) -> None:
        """The store opened ``user``'s account for the first time. Every account there
        when watching began is watched already; this one is new (or new to us, made
        by another program meanwhile), so all its mail is news."""
        self._known.add(user)
        if self._opened_early is not None:  # the first listing is still running
            self._opened_early.append(user)
            return
        self._watch_account(user, since=0.0)

    def _watch_account(self, mailbox: str, since: float | None) -> None:
        """Watch every folder of ``mailbox``; announce what is there already from
        ``since`` on (a new account: its first messages may predate the watch)."""
        if mailbox in self._watched or self._account_watch is None:
            return
        self._watched[mailbox] = []
        d = defer.Deferred.fromCoroutine(self._watch_folders(mailbox, since))
        d.addErrback(lambda f: log.failure("watching {mailbox} failed", f, mailbox=mailbox))

    async def _watch_folders(self, mailbox: str, since: float | None) -> None:
        account = await self.store.open_account(mailbox)
        names = await account.list_folders()
        for name in names:
            try:
                folder = await account.open_folder(name)
            except NoSuchFolder:
                continue
            pairs = self._watched.get(mailbox)
            if pairs is None:  # closed meanwhile
                return
            watch = _FolderWatch(self, mailbox)
            # In one turn: what is listed now came before the listener, the rest
            # reaches it, so nothing is announced twice or missed.
            folder.add_listener(watch)
            pairs.append((folder, watch))
            if since is not None:
                for info in folder.messages():
                    if info.internal_date >= since:
                        self._announce(mailbox, folder, info)

    def _announce(self, mailbox: str, folder: IFolder, info: MessageInfo) -> None:
        """Tell every subscriber of one new message, in arrival order."""

        async def tell(_: object) -> None:
            if not self._listeners:
                return
            try:
                summary = await self._summary(mailbox, folder, info)
            except NoSuchMessage:
                return  # gone before we read it
            for listener in list(self._listeners):
                try:
                    listener(summary)
                except Exception:
                    log.failure("mail view subscriber failed")

        d = self._announcing.addCallback(lambda r: defer.Deferred.fromCoroutine(tell(r)))
        d.addErrback(lambda f: log.failure("announcing a new message failed", f))
        self._announcing = d
