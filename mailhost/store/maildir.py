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

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from mailhost.groupsync import GroupSync
from mailhost.store import maildir_io
from mailhost.store.interfaces import IMailStore
from mailhost.store.maildir_account import MaildirAccount
from mailhost.store.maildir_folder import MaildirFolder
from mailhost.store.maildir_watch import ChangeWatcher
from mailhost.store.maildir_writer import MaildirMessageWriter
from mailhost.store.modes import PRIVATE, FileModes
from mailhost.store.names import split_user

__all__ = ["MaildirStore", "MaildirAccount", "MaildirFolder", "MaildirMessageWriter"]

TMP_DIR = ".tmp"  # under the store root; a leading '.' can never be a domain


@implementer(IMailStore)
class MaildirStore:
    """Implements: IMailStore on a Maildir++ tree at ``root``.

    ``fsync=False`` skips every fsync (tests, throwaway dev data): a crash may then lose
    acknowledged mail. ``reactor`` defaults to the global one; its thread pool runs
    all file-system work. ``watch`` says how folders someone listens to notice other
    programs' changes: ``"inotify"`` (falling back to polling where it is missing or
    out of watches) or ``"poll"`` (see maildir_watch). ``modes``: the mode and group of
    every file and directory the store creates (private by default; see
    mailhost.store.modes).
    """

    log = Logger()

    def __init__(self, root: str, fsync: bool = True, reactor=None,
                 modes: FileModes = PRIVATE, watch: str = "inotify") -> None:
        self.root = os.path.abspath(root)
        self.fsync = fsync
        self.modes = modes
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._accounts: dict[str, MaildirAccount] = {}
        self._opening: dict[str, list[defer.Deferred]] = {}
        self._sync = GroupSync()
        self._tmp_ready = False
        self._recovery: defer.Deferred | None = None  # of crashed multi-folder commits
        self._recovered = False
        self._watcher = ChangeWatcher(reactor, self.run_blocking, watch)

    def run_blocking(self, fn, *args) -> defer.Deferred:
        """Run ``fn(*args)`` in the reactor's thread pool: the store's one thread hop, for
        every blocking file-system call its folders, accounts, writers and message
        readers make (never the reactor thread's business; see maildir_io)."""
        return threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), fn,
                                         *args)

    @property
    def syncer(self) -> GroupSync | None:
        """The group commit that fsyncs directories and uidlists, None with fsync off."""
        return self._sync if self.fsync else None

    def account(self, user: str):
        """Coroutine: the live MaildirAccount of ``user`` (for the store's own parts;
        protocols use ``open_account``)."""
        return self._account(user)

    def tmp_dir(self) -> str:
        """Where writers keep messages being received (made, and cleaned, on first use)."""
        return self._tmp_dir()

    def _tmp_dir(self) -> str:
        path = os.path.join(self.root, TMP_DIR)
        if not self._tmp_ready:
            self.modes.makedirs(path)  # once; a mkdir is a metadata-only syscall
            self._tmp_ready = True
            d = self.run_blocking(maildir_io.clean_tmp, path)
            d.addErrback(lambda f: self.log.failure("cleaning {path} failed", f, path=path))
        return path

    def _recover(self) -> defer.Deferred:
        """Fires once the commits a crash interrupted are finished (all copies of such
        a message or none, see maildir_io.recover_commits); run once, before any
        account is opened, so no folder is read in between. A failure is logged: the
        journals stay for the next start, and the store serves meanwhile."""
        if self._recovery is None:
            d = self.run_blocking(maildir_io.recover_commits, self._tmp_dir(), self.syncer)

            def report(done) -> None:
                for journal, forward, count in done:
                    self.log.warn("finished a commit a crash interrupted: {journal} "
                                  "{how} ({count} copies)", journal=journal, count=count,
                                  how="rolled forward" if forward else "rolled back",
                                  event="commit_recovered")

            d.addCallback(report)
            d.addErrback(lambda f: self.log.failure(
                "recovering interrupted commits in {path} failed", f, path=self._tmp_dir()))

            def finished(_):
                self._recovered = True

            d.addCallback(finished)
            self._recovery = d
        waiter: defer.Deferred = defer.Deferred()
        self._recovery.addCallback(lambda r: (waiter.callback(None), r)[1])
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
            d: defer.Deferred = defer.Deferred()
            self._opening[user].append(d)
            return await d
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
        return account

    async def _folder(self, user: str, name: str) -> MaildirFolder:
        account = await self._account(user)
        return await account._folder(name)

    def open_account(self, user: str):
        return defer.Deferred.fromCoroutine(self._account(user))

    def new_message(self) -> MaildirMessageWriter:
        return MaildirMessageWriter(self)

    def close(self):
        """Number the deliveries still waiting for a UID (their files are durable
        either way), flush the metadata caches (UIDs and flags are always already on
        disk), stop watching folders and close the uidlist files they hold open."""
        folders = [f for a in self._accounts.values() for f in a._folders.values()]
        for folder in folders:
            folder._unwatch()
        self._watcher.close()
        flushes = [f._numbered_all()
                   .addCallback(lambda _, f=f: f._flush_cache())
                   .addCallback(lambda _, f=f: f._close_uids())
                   for f in folders]
        return defer.gatherResults(flushes, consumeErrors=True).addCallback(lambda _: None)
