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

The message pipeline (checks and modifiers, ``mailhost.message.stage``, issue 15):
when stages are configured, ``Delivery`` holds the message in a ``Spool`` (memory,
or a temporary file written and read in the thread pool) while the stages hash it,
and opens the targets only at ``commit``, after the stages' verdict: a refusal
becomes the end-of-data reply and no target ever sees the message; ``quarantine``
routes the local copies to Junk; otherwise every target gets the stages' new header
fields, our ``Received:``, the (possibly rewritten) header block and the held body.

Why hold the message rather than teach the targets to "prepend these fields at
prepare": the verdict also decides *which* targets there are (Junk or INBOX, or none
at all for a reject), the header block itself may change (forged
Authentication-Results removed), and a second mechanism in every target (the
outbound spool's envelope, the Maildir writer's tmp file) would be needed for what
one extra sequential write and read of the message gives here, once, for every
target alike. With no stages configured, nothing is held: the message streams
straight into the targets as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailhost.message.spool import Spool
from mailhost.message.stage import HeaderSplitter, MessageContext, Pipeline
from mailhost.message.target import IDeliveryTarget
from mailhost.outbound.interfaces import IOutboundQueue, QueueRecipient
from mailhost.outbound.queue_target import QueueTarget
from mailhost.smtp.reply import Reply
from mailhost.store.interfaces import DeliveryTarget, IMailStore
from mailhost.store.mailbox_target import MailboxTarget

log = Logger()


def targets_for(store: IMailStore, queue: IOutboundQueue | None, sender: str,
                mailboxes: Sequence[str], remote: Sequence[QueueRecipient],
                envid: str | None = None, ret: str | None = None,
                quarantined: bool = False) -> list[IDeliveryTarget]:
    """Routing of one SMTP transaction: one mailbox target for every local mailbox
    (INBOX, or the Junk folder for quarantined mail), one queue target for every
    remote recipient."""
    targets: list[IDeliveryTarget] = []
    if mailboxes:
        folder, role = ("Junk", "\\Junk") if quarantined else ("INBOX", None)
        # No UID wanted: the store numbers the copies after the 250 (see want_uid).
        targets.append(MailboxTarget(
            store, sender, [DeliveryTarget(user=m, folder=folder, special_use=role,
                                           want_uid=False) for m in mailboxes]))
    if remote:
        if queue is None:
            raise ValueError("remote recipients without an outbound queue")
        targets.append(QueueTarget(queue, sender, remote, envid=envid, ret=ret))
    return targets


class Delivery:
    """One message into ``targets``: ``write`` fans out, ``commit``/``abort`` finish.

    ``header`` (SMTP's ``Received:``) goes into every copy, after what each target
    adds in front (a mailbox's ``Return-Path:``).

    With a non-empty ``pipeline`` (and the message's ``context``), ``targets`` is not
    used: ``route(quarantined)`` gives the targets at commit (see the module
    docstring).
    """

    def __init__(self, targets: Sequence[IDeliveryTarget], header: bytes = b"", *,
                 pipeline: Pipeline | None = None, context: MessageContext | None = None,
                 route: Callable[[bool], Sequence[IDeliveryTarget]] | None = None,
                 reactor: Any = None) -> None:
        self._begun: list[IDeliveryTarget] = []
        self._ids: list[str] = []
        self._finished = False
        self._spool: Spool | None = None
        if pipeline and context is not None and route is not None:
            self.targets: list[IDeliveryTarget] = []
            self._pipeline, self._context, self._route = pipeline, context, route
            self._header = header
            self._splitter = HeaderSplitter(pipeline, context)
            self._spool = Spool(reactor, directory=pipeline.spool_dir)
            return
        # Stable: targets that can hold come first, the rest keep their order after them.
        self.targets = sorted(targets, key=lambda t: not t.holds)
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
        if self._spool is not None:
            self._spool.write(data)
            self._splitter.feed(data)
            return
        for target in self.targets:
            target.write(data)

    def commit(self) -> defer.Deferred:
        """Deferred firing with the ids the targets named (queue ids) once every copy
        is durable and let go; on failure every copy has been taken back first.

        (Plain callbacks, not inlineCallbacks: this runs once per message on the
        ingest hot path.)
        """
        self._finished = True
        if self._spool is not None:
            d = defer.Deferred.fromCoroutine(self._run_pipeline())
            d.addCallback(self._prepare_all)
        else:
            d = self._prepare_all(None)
        d.addCallback(self._commit_all)
        d.addErrback(self._failed)
        if self._spool is not None:
            d.addBoth(self._close_spool)
        return d

    async def _run_pipeline(self) -> None:
        """The stages' verdict, then the targets it routes to get the message."""
        self._splitter.close()
        assert self._spool is not None  # commit runs the pipeline only with a spool
        spool, offset = self._spool, self._splitter.header_length
        self._context.read_body = lambda sink: spool.read(offset, sink)
        verdict = await self._pipeline.finish(self._context)
        if verdict.refuses:
            raise Reply(verdict.code, verdict.status, verdict.text)
        if verdict.action == "discard":  # accepted, and delivered nowhere
            return
        self.targets = sorted(self._route(self._context.quarantined), key=lambda t: not t.holds)
        for target in self.targets:
            target.begin()
            self._begun.append(target)
        self._fan(self._context.prepended + self._header + self._context.header_block)
        # Through the context: a stage may have replaced the body (a milter's SMFIR_REPLBODY).
        await self._context.read_body(self._fan)

    def _fan(self, data: bytes) -> None:
        for target in self.targets:
            target.write(data)

    def _close_spool(self, result: object) -> object:
        assert self._spool is not None  # added only with a spool
        self._spool.close()
        return result

    def _prepare_all(self, _: object) -> defer.Deferred:
        if len(self.targets) == 1:  # the usual case: no chain to build (issue 18)
            return self._prepare(None, self.targets[0])
        d = defer.succeed(None)
        for target in self.targets:
            d.addCallback(self._prepare, target)
        return d

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
        if self._spool is not None:
            self._spool.close()
        self._abort_targets()
