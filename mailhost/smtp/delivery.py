"""A message on its way to its delivery targets, as one transaction.

Like maddy's delivery (start, body, commit/abort): the protocol opens a ``Delivery``
at DATA (or the first BDAT) over the targets the recipients route to, streams body
chunks in as they arrive, and commits at the final dot. ``commit`` fires only when
every target has its copy durable, which is when the protocol may say 250.

How several targets act as one: every target is prepared in turn, those that can hold
a durable copy back (``holds``: the queue) first and those whose prepare already
delivers (mailboxes) last; only when all are prepared are the held copies let go. If
any step fails, every copy is taken back (held ones withdrawn) and the client's retry
brings the whole message again, with no duplicate anywhere. (With more than one
target that cannot hold, a failure of a later one would leave the earlier one's
copies delivered; routing makes at most one, ``MailboxTarget`` covering every local
mailbox.)

Where the message pipeline (checks and modifiers, issue 15) plugs in: its checks run
in ``commit`` before the first ``prepare`` (``_before_prepare``), on the message the
targets have received so far, and may refuse it, which aborts every target; routing
(``targets_for``) decides which targets a message gets.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailhost.message.target import IDeliveryTarget
from mailhost.outbound.interfaces import IOutboundQueue, QueueRecipient
from mailhost.outbound.queue_target import QueueTarget
from mailhost.store.interfaces import DeliveryTarget, IMailStore
from mailhost.store.mailbox_target import MailboxTarget

log = Logger()


def targets_for(store: IMailStore, queue: IOutboundQueue | None, sender: str,
                mailboxes: Sequence[str], remote: Sequence[QueueRecipient],
                envid: str | None = None, ret: str | None = None) -> list[IDeliveryTarget]:
    """Routing of one SMTP transaction: one mailbox target for every local mailbox, one
    queue target for every remote recipient."""
    targets: list[IDeliveryTarget] = []
    if mailboxes:
        # No UID wanted: the store numbers the copies after the 250 (see want_uid).
        targets.append(MailboxTarget(store, sender,
                                     [DeliveryTarget(user=m, want_uid=False) for m in mailboxes]))
    if remote:
        if queue is None:
            raise ValueError("remote recipients without an outbound queue")
        targets.append(QueueTarget(queue, sender, remote, envid=envid, ret=ret))
    return targets


class Delivery:
    """One message into ``targets``: ``write`` fans out, ``commit``/``abort`` finish.

    ``header`` (SMTP's ``Received:``) goes into every copy, after what each target
    adds in front (a mailbox's ``Return-Path:``).
    """

    def __init__(self, targets: Sequence[IDeliveryTarget], header: bytes = b"") -> None:
        # Stable: targets that can hold come first, the rest keep their order after them.
        self.targets = sorted(targets, key=lambda t: not t.holds)
        self._begun: list[IDeliveryTarget] = []
        self._ids: list[str] = []
        self._finished = False
        try:
            for target in self.targets:
                target.begin()
                self._begun.append(target)
                if header:
                    target.write(header)
        except BaseException:
            self.abort()
            raise

    def write(self, data: bytes) -> None:
        for target in self.targets:
            target.write(data)

    def commit(self) -> defer.Deferred:
        """Deferred firing with the ids the targets named (queue ids) once every copy
        is durable and let go; on failure every copy has been taken back first.

        (Plain callbacks, not inlineCallbacks: this runs once per message on the
        ingest hot path.)
        """
        self._finished = True
        d = defer.maybeDeferred(self._before_prepare)
        for target in self.targets:
            d.addCallback(self._prepare, target)
        d.addCallback(self._commit_all)
        return d.addErrback(self._failed)

    def _before_prepare(self) -> None:
        """The seam for the message pipeline's checks (issue 15): nothing yet."""

    def _prepare(self, _: object, target: IDeliveryTarget) -> defer.Deferred:
        return defer.maybeDeferred(target.prepare).addCallback(self._prepared)

    def _prepared(self, ident: object) -> None:
        if ident is not None:
            self._ids.append(str(ident))

    def _commit_all(self, _: object) -> list[str]:
        for target in self.targets:
            target.commit()
        return self._ids

    def _failed(self, failure: Failure) -> defer.Deferred:
        d = self._abort_targets()
        return d.addCallback(lambda _: failure)

    def _abort_targets(self) -> defer.Deferred:
        """Abort every begun target; an abort's own error never masks the original."""
        pending = []
        for target in self._begun:
            d = defer.maybeDeferred(target.abort)
            d.addErrback(lambda f: log.failure("delivery target abort failed", f))
            pending.append(d)
        return defer.gatherResults(pending)

    def abort(self) -> None:
        """Throw everything away; idempotent; a no-op once commit started."""
        if self._finished:
            return
        self._finished = True
        self._abort_targets()
