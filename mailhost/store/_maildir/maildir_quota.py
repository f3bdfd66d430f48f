"""The Maildir account's quota root (Implements: IQuotaRoot, with MaildirAccount).

Usage lives in the Maildir's ``maildirsize`` (see maildirsize); the store's writers,
COPY and EXPUNGE tell the account what they added or removed (``charge``), and a
folder deleted makes the file be rebuilt. The limit comes from the store, which has
it from the composition root. Everything on disk runs in the store's thread pool.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.logger import Logger

from mailhost.store._maildir import maildirsize
from mailhost.store.quota import QuotaUsage

if TYPE_CHECKING:
    from mailhost.store.maildir import MaildirStore

log = Logger()


class MaildirQuotaRoot:
    """The quota half of ``MaildirAccount`` (a mixin: it uses the account's store,
    root and user)."""

    _store: MaildirStore
    _root: str
    user: str
    _quota_lock: threading.Lock

    def quota_limit(self) -> int:
        return self._store.quota_limit(self.user)

    def quota(self) -> defer.Deferred[QuotaUsage]:
        return defer.Deferred.fromCoroutine(self._quota())

    async def _quota(self) -> QuotaUsage:
        limit = self._store.quota_limit(self.user)
        octets, messages = await self._store.run_blocking(
            maildirsize.current, self._root, (limit, 0), time.time(), self._store.modes,
            self._quota_lock)
        return QuotaUsage(octets, messages, limit, 0)

    def charge(self, octets: int, messages: int) -> defer.Deferred[None]:
        """Count a change in usage (negative for removals). Never fails: a lost line
        is made good by the file's next rebuild, so it is logged, not raised."""
        if not octets and not messages:
            return defer.succeed(None)
        d = self._store.run_blocking(maildirsize.add, self._root, octets, messages,
                                     self._quota_lock)
        d.addErrback(lambda f: log.failure("updating {root}/maildirsize failed", f,
                                           root=self._root))
        return d

    def charge_in_thread(self, octets: int, messages: int) -> maildirsize.Change:
        """``charge`` for a worker thread that is there anyway (a delivery's commit:
        batch_commit, which sums a batch's changes per account), saving a thread hop
        per message."""
        return maildirsize.Change(self._root, octets, messages, self._quota_lock)

    def quota_recount(self) -> defer.Deferred[None]:
        """Have usage rebuilt at the next look (a whole folder went away)."""
        d = self._store.run_blocking(maildirsize.remove, self._root)
        d.addErrback(lambda f: log.failure("removing {root}/maildirsize failed", f,
                                           root=self._root))
        return d
