"""Streams a message into the spool as SMTP DATA arrives (``SpoolWriter``).

A message up to ``MEMORY_LIMIT`` (nearly all mail) stays in memory and becomes the
one-file form at commit; a larger one is streamed to ``tmp/`` and keeps the two-file
form (see ``spool``). The hop count for the relay-time loop check is taken here, as the
header block streams past (``hops``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from zope.interface import implementer

from mailhost.message.crlf import CRLFNormalizer
from mailhost.message.hops import HopCounter
from mailhost.outbound.envelope import Envelope, RecipientState, new_queue_id
from mailhost.outbound.interfaces import IQueueWriter, QueueRecipient
from mailhost.outbound.spool import SpoolFiles

#: Messages up to this size stay in memory until commit.
MEMORY_LIMIT = 256 * 1024


@implementer(IQueueWriter)
class SpoolWriter:
    """Streams one message into ``tmp/``; ``commit`` makes it durable in a thread.

    Implements: IQueueWriter. Bare CR and bare LF become CRLF (``message.crlf``, the
    wire's rule), so the file holds what the client sends (after dot-stuffing) and the
    envelope's size is the size on the wire.
    """

    def __init__(
        self,
        files: SpoolFiles,
        sender: str,
        envid: str | None,
        ret: str | None,
        on_commit: Callable[[Envelope], None],
        clock_seconds: Callable[[], float],
    ) -> None:
        self._files = files
        self._sender = sender
        self._envid = envid
        self._ret = ret.upper() if ret else None
        self._on_commit = on_commit
        self._now = clock_seconds
        self.id = new_queue_id()
        self._path = os.path.join(files.tmp_dir, f"{self.id}.msg")
        # Like the store's writer: a small message stays in memory and the commit's
        # worker thread creates the file, so the reactor never waits on a file create.
        self._file: Any = None
        self._buffer: bytearray | None = bytearray()
        self._crlf = CRLFNormalizer()
        self.size = 0
        self._done = False
        self._hops = HopCounter()
        self._prepared: Envelope | None = None  # durable, waiting for release/withdraw

    def write(self, data: bytes) -> None:
        if self._done:
            raise RuntimeError("write after commit/abort")
        data = self._crlf.feed(data)
        if not self._hops.done:
            self._hops.feed(data)
        self.size += len(data)
        if self._buffer is None:
            self._file.write(data)
            return
        self._buffer += data
        if len(self._buffer) > MEMORY_LIMIT:  # large: stream the rest through a file
            self._file = open(self._path, "wb")  # noqa: SIM115 - lives until commit/abort
            self._file.write(self._buffer)
            self._buffer = None

    @property
    def hops(self) -> int:
        """``Received:`` fields in the header block so far, ours included when SMTP wrote
        it; stored in the envelope for the relay-time loop check."""
        return self._hops.count

    def commit(self, recipients: Sequence[QueueRecipient]) -> object:
        d = self.prepare(recipients)

        def release(qid: str) -> str:
            self.release()
            return qid

        return d.addCallback(release)

    def release(self) -> None:
        env, self._prepared = self._prepared, None
        if env is None:
            raise RuntimeError("release without a prepared message")
        self._on_commit(env)

    def withdraw(self) -> object:
        env, self._prepared = self._prepared, None
        if env is None:
            raise RuntimeError("withdraw without a prepared message")
        return self._files.remove(env.id)

    def prepare(self, recipients: Sequence[QueueRecipient]) -> Any:
        if self._done:
            raise RuntimeError("commit after commit/abort")
        self._done = True
        if self._file is not None:
            self._file.close()
        self._hops.finish()
        env = Envelope(
            id=self.id,
            sender=self._sender,
            recipients=[
                RecipientState(address=r.address, notify=sorted(r.notify), orcpt=r.orcpt)
                for r in recipients
            ],
            arrival=self._now(),
            size=self.size,
            envid=self._envid,
            ret=self._ret,
            hops=self._hops.count,
        )
        data = None if self._buffer is None else bytes(self._buffer)
        self._buffer = None
        d = self._files.commit(self._path, env, data)

        def committed(_: object) -> str:
            self._prepared = env
            return env.id

        def failed(f: Any) -> Any:
            try:
                os.unlink(self._path)
            except OSError:
                pass
            return f

        d.addCallbacks(committed, failed)
        return d

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer = None
        if self._file is None:
            return
        self._file.close()
        try:
            os.unlink(self._path)
        except OSError:
            pass

