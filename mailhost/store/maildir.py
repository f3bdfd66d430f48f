"""MaildirStore: the durable store, Maildir++ on disk, readable by Dovecot and mutt.

Layout: ``<root>/<domain>/<localpart>/`` is a user's Maildir (INBOX); folder ``A.B``
is ``.A.B`` beside it. Files are stored CRLF (like Dovecot's mail_save_crlf=yes) and
named ``<sec>.M<usec>P<pid>Q<n>.<host>,S=<size>,W=<size>:2,<flags>``; keywords are
letters a-z mapped by each folder's ``dovecot-keywords``. Per folder, Dovecot's own
``dovecot-uidlist`` (v3, under its ``dovecot-uidlist.lock`` dotlock) keeps UIDVALIDITY,
UIDNEXT and base name -> UID, shared live with Dovecot (maildir_uids); our private
``mailhost-uidcache`` keeps each UID's date and sizes (a cache, rebuilt from the files)
and ``mailhost-cache`` the IMAP metadata cache. A ``mailhost-uidlist`` of an older
mailhost is migrated on first open and renamed ``mailhost-uidlist.migrated``. Per
user, ``subscriptions`` and ``mailhost-special-use``. Messages being received live in
``<root>/.tmp/``, beside the journals of messages being committed to several folders
at once (maildir_io: all copies or none); a crash's journals are finished before the
store opens its first account.
Everything created here is private (files 0600, directories 0700) unless the store's
``FileModes`` says otherwise, whatever the umask.

The pieces: maildir_writer (delivery), maildir_folder (index and changes),
maildir_account (folder tree), maildir_index/maildir_io (the thread-side work),
maildir_watch (noticing other programs' changes: inotify, or polling).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorFDSet, IReactorThreads, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mailhost.groupsync import GroupSync
from mailhost.store._maildir import maildir_io
from mailhost.store._maildir.batch_commit import BatchCommitter
from mailhost.store._maildir.maildir_account import MaildirAccount
from mailhost.store._maildir.maildir_folder import MaildirFolder
from mailhost.store._maildir.maildir_load import MaildirLoader
from mailhost.store._maildir.maildir_watch import ChangeWatcher
from mailhost.store._maildir.maildir_writer import MaildirMessageWriter
from mailhost.store.interfaces import (
    IAccountListener,
    IAccountListing,
    IMailAccount,
    IMailStore,
)
from mailhost.store.listeners import AccountListenerSet
from mailhost.store.modes import PRIVATE, FileModes, process_umask
from mailhost.store.names import check_address, split_user
from mailhost.store.quota import IQuotaStore, QuotaLimits, QuotaUsage

__all__ = ["MaildirStore", "MaildirAccount", "MaildirFolder", "MaildirMessageWriter"]

TMP_DIR = ".tmp"  # under the store root; a leading '.' can never be a domain

_T = TypeVar("_T")


class IStoreReactor(IReactorTime, IReactorThreads, IReactorFDSet):
    """What the store asks of its reactor: timers (its folders' batching), the thread
    pool (every blocking file-system call) and readers (the inotify descriptor)."""


@implementer(IMailStore, IAccountListing, IQuotaStore)
class MaildirStore:
    """Implements: IMailStore, IAccountListing and IQuotaStore on a Maildir++ tree at ``root``.

    ``fsync=False`` skips every fsync (tests, throwaway dev data): a crash may then lose
    acknowledged mail. ``reactor`` defaults to the global one; its thread pool runs
    all file-system work. ``watch`` says how folders someone listens to notice other
    programs' changes: ``"inotify"`` (falling back to polling where it is missing or
    out of watches) or ``"poll"`` (see maildir_watch). ``modes``: the mode and group of
    every file and directory the store creates (private by default; see
    mailhost.store.modes).
    """

    log = Logger()

    def __init__(self, root: str, fsync: bool = True, reactor: IStoreReactor | None = None,
                 modes: FileModes = PRIVATE, watch: str = "inotify",
                 modseq_clock: Callable[[], int] | None = None) -> None:
        self.root = os.path.abspath(root)
        #: Other processes of this server number changes too (``server.workers``):
        #: mod-sequences follow this clock (``mailhost.store.modseq``).
        self.modseq_clock = modseq_clock
        self.fsync = fsync
        self.modes = modes
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = cast(IStoreReactor, global_reactor)
        self._reactor: IStoreReactor = reactor
        self._accounts: dict[str, MaildirAccount] = {}
        self._opening: dict[str, list[defer.Deferred[MaildirAccount]]] = {}
        self._sync = GroupSync()
        #: Where message writers commit (batches of deliveries per thread hop).
        self.committer = BatchCommitter(self.run_blocking, lambda: self.syncer)
        self._tmp_ready = False
        self._tmp_path = ""  # root/.tmp, once made
        self._new_files_fit: bool | None = None  # see new_files_fit
        self._recovery: defer.Deferred[None] | None = None  # of crashed multi-folder commits
        self._recovered = False
        self._watcher = ChangeWatcher(reactor, self.run_blocking, watch)
        self._quota_limits: QuotaLimits = lambda user: 0
        self._account_listeners = AccountListenerSet()

    def run_blocking(self, fn: Callable[..., _T], *args: object) -> defer.Deferred[_T]:
        """Run ``fn(*args)`` in the reactor's thread pool: the store's one thread hop, for
        every blocking file-system call its folders, accounts, writers and message
        readers make (never the reactor thread's business; see maildir_io)."""
        return threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), fn,
                                         *args)

    @property
    def syncer(self) -> GroupSync | None:
        """The group commit that fsyncs directories and uidlists, None with fsync off."""
        return self._sync if self.fsync else None

    def account(self, user: str) -> Coroutine[Any, Any, MaildirAccount]:
        """Coroutine: the live MaildirAccount of ``user`` (for the store's own parts;
        protocols use ``open_account``)."""
        return self._account(user)

    def new_files_fit(self) -> bool:
        """Whether the files this store creates come out with its mode and group as
        they are (``FileModes.created_fits``), so its writers need not fstat them
        (issue 18: a system call a message in the commit thread). Judged by the umask
        at the first ask, a store's first delivery: twistd sets its umask before the
        reactor runs, and mailhost never changes it. (A process that narrows its umask
        later gets files narrower than ``modes`` says, never wider.)"""
        if self._new_files_fit is None:
            self._new_files_fit = self.modes.created_fits(process_umask())
        return self._new_files_fit

    def tmp_dir(self) -> str:
        """Where writers keep messages being received (made, and cleaned, on first use)."""
        return self._tmp_dir()

    def _tmp_dir(self) -> str:
        if self._tmp_ready:  # every message asks (issue 18)
            return self._tmp_path
        path = self._tmp_path = os.path.join(self.root, TMP_DIR)
        self.modes.makedirs(path)  # once; a mkdir is a metadata-only syscall
        self._tmp_ready = True
        d = self.run_blocking(maildir_io.clean_tmp, path)
        d.addErrback(lambda f: self.log.failure("cleaning {path} failed", f, path=path))
        return path

    def _recover(self) -> defer.Deferred[None]:
        """Fires once the commits a crash interrupted are finished (all copies of such
        a message or none, see maildir_io.recover_commits); run once, before any
        account is opened, so no folder is read in between. A failure is logged: the
        journals stay for the next start, and the store serves meanwhile."""
        if self._recovery is None:
            d = self.run_blocking(maildir_io.recover_commits, self._tmp_dir(), self.syncer)

            def report(done: list[tuple[str, bool, int]]) -> None:
                for journal, forward, count in done:
                    self.log.warn("finished a commit a crash interrupted: {journal} "
                                  "{how} ({count} copies)", journal=journal, count=count,
                                  how="rolled forward" if forward else "rolled back",
                                  event="commit_recovered")

            reported = d.addCallback(report)
            reported.addErrback(lambda f: self.log.failure(
                "recovering interrupted commits in {path} failed", f, path=self._tmp_dir()))

            def finished(_: object) -> None:
                self._recovered = True

            self._recovery = reported.addCallback(finished)
        waiter: defer.Deferred[None] = defer.Deferred()

        def wake(result: None) -> None:
            waiter.callback(None)
            return result

        self._recovery.addCallback(wake)
        return waiter

    def _user_root(self, user: str) -> str:
        local, domain = split_user(user)
        return os.path.join(self.root, domain, local)

    async def _account(self, user: str) -> MaildirAccount:
        account = self._accounts.get(user)
        if account is not None:
            return account
        if not self._recovered:
            await self._recover()
            account = self._accounts.get(user)
            if account is not None:
                return account
        root = self._user_root(user)
        if user in self._opening:
            opened: defer.Deferred[MaildirAccount] = defer.Deferred()
            self._opening[user].append(opened)
            return await opened
        self._opening[user] = []
        account = MaildirAccount(self, user, root)
        try:
            await account._setup()
        except BaseException as e:
            for d in self._opening.pop(user):
                d.errback(e)
            raise
        self._accounts[user] = account
        for d in self._opening.pop(user):
            d.callback(account)
        self._account_listeners.opened(user)
        return account

    async def _folder(self, user: str, name: str) -> MaildirFolder:
        account = await self._account(user)
        return await account._folder(name)

    def start(self) -> defer.Deferred[None]:
        return self._recover()

    def set_quota_limits(self, limits: QuotaLimits) -> None:
        self._quota_limits = limits

    def quota_limit(self, user: str) -> int:
        return self._quota_limits(user)

    def quota(self, user: str) -> defer.Deferred[QuotaUsage]:
        async def usage() -> QuotaUsage:
            return await (await self._account(user)).quota()

        return defer.Deferred.fromCoroutine(usage())

    def open_account(self, user: str) -> defer.Deferred[IMailAccount]:
        return defer.Deferred.fromCoroutine(self._account(user))

    def new_message(self) -> MaildirMessageWriter:
        return MaildirMessageWriter(self)

    def accounts(self) -> defer.Deferred[list[str]]:
        """Every ``<domain>/<localpart>`` Maildir under the root (a directory with
        ``cur/``), listed in the thread pool, plus accounts opened but not yet made."""

        def add_open(found: list[str]) -> list[str]:
            return sorted(set(found) | set(self._accounts))

        return self.run_blocking(_list_accounts, self.root).addCallback(add_open)

    def add_account_listener(self, listener: IAccountListener) -> None:
        self._account_listeners.add(listener)

    def remove_account_listener(self, listener: IAccountListener) -> None:
        self._account_listeners.remove(listener)

    def close(self) -> defer.Deferred[None]:
        """Number the deliveries still waiting for a UID (their files are durable
        either way), flush the metadata caches (UIDs and flags are always already on
        disk), stop watching folders and close the uidlist files they hold open."""
        folders = [f for a in self._accounts.values() for f in a._folders.values()]
        for folder in folders:
            folder._unwatch()
        self._watcher.close()

        def flush(folder: MaildirFolder) -> defer.Deferred[None]:
            d = folder._numbered_all()
            d.addCallback(lambda _: folder._flush_cache())
            return d.addCallback(lambda _: folder._close_uids())

        flushes = [flush(f) for f in folders]
        return defer.gatherResults(flushes, consumeErrors=True).addCallback(lambda _: None)


def usage_on_disk(root: str, user: str) -> tuple[int, int]:
    """(octets, messages) ``user`` holds in the Maildir store at ``root``, from their
    ``maildirsize`` (or counted), writing nothing: for ``mailhost user quota``."""
    import time

    from mailhost.store._maildir import maildirsize

    local, domain = split_user(user)
    return maildirsize.peek(os.path.join(os.path.abspath(root), domain, local), time.time())


def _list_accounts(root: str) -> list[str]:
    """Thread side of ``accounts``: the user address of every Maildir two levels down
    whose name is a valid address (so no stray directory becomes an account)."""
    found: list[str] = []
    try:
        domains = os.listdir(root)
    except FileNotFoundError:
        return found
    for domain in domains:
        if domain.startswith("."):
            continue  # .tmp and other private directories
        try:
            locals_ = os.listdir(os.path.join(root, domain))
        except (NotADirectoryError, FileNotFoundError):
            continue
        for local in locals_:
            user = f"{local}@{domain}"
            if not os.path.isdir(os.path.join(root, domain, local, "cur")):
                continue
            try:
                check_address(user)
            except Exception:
                continue
            found.append(user)
    return found


def account_loader(root: str, user: str, fsync: bool = True,
                   modes: FileModes = PRIVATE) -> MaildirLoader:
    """An ``IAccountLoader`` writing ``user``'s new Maildir under ``root`` with the UIDs
    it is given (``mailhost.store.transfer``)."""
    return MaildirLoader(root, user, fsync=fsync, modes=modes)
