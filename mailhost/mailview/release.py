"""Release: send one stored message to an SMTP server, byte for byte.

The relay's own client (``mailhost.outbound.client.run_session``) does the SMTP: strict
replies, timeouts per stage, pipelining, BDAT, dot-stuffing at any chunk boundary and
CRLF only on the wire. It reads a message from a file, so the stored message is copied
to a private temporary file first, in the thread pool (through the store's reader,
``IMessageReader.call``), and removed afterwards.

What is sent is the message as stored, less the ``Return-Path:`` field that final
delivery put at its top (RFC 5321 §4.4: a relay must not pass one on, and the
receiving server adds its own). Nothing else changes.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import IO, Any

from twisted.internet import threads
from twisted.internet.endpoints import clientFromString

from mailhost.mailview.parsing import HEADER_LIMIT, without_return_path
from mailhost.outbound.client import DELIVERED, ClientPolicy, Job, Outcome, run_session
from mailhost.outbound.envelope import Envelope, RecipientState, new_queue_id
from mailhost.store.interfaces import IMessageReader

_COPY_CHUNK = 256 * 1024


class ReleaseFailed(Exception):
    """The server did not take the message (for every recipient); the text says why."""


def _copy_out(file: IO[bytes]) -> tuple[str, int]:
    """Thread side: the message less its leading Return-Path into a new private temp
    file; (path, size)."""
    head = file.read(HEADER_LIMIT)
    skip, _ = without_return_path(head)
    fd, path = tempfile.mkstemp(prefix="mailhost-release-")
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(head[skip:])
            size += len(head) - skip
            while chunk := file.read(_COPY_CHUNK):
                out.write(chunk)
                size += len(chunk)
    except BaseException:
        os.unlink(path)
        raise
    return path, size


class _OneJob:
    """A JobSource of one job; keeps the outcome per recipient."""

    def __init__(self, job: Job) -> None:
        self.job: Job | None = job
        self.outcomes: dict[str, Outcome] = {}

    def next_job(self) -> Job | None:
        job, self.job = self.job, None
        return job

    def job_done(self, job: Job, outcomes: dict[str, Outcome], info: dict[str, Any]) -> None:
        self.outcomes.update(outcomes)


async def release_message(reader: IMessageReader, endpoint: str, *, sender: str,
                          recipients: list[str], hostname: str = "localhost",
                          reactor: Any = None, timeout: float = 60.0) -> None:
    """Send the message ``reader`` yields from ``sender`` to ``recipients`` through the
    SMTP server at ``endpoint`` (a Twisted client endpoint string); fails with
    ``ReleaseFailed`` unless every recipient is accepted."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    if not recipients:
        raise ReleaseFailed("no recipients")
    try:
        path, size = await reader.call(_copy_out)
    finally:
        reader.close()
    try:
        rcpts = [RecipientState(address) for address in recipients]
        envelope = Envelope(id=new_queue_id(), sender=sender, recipients=rcpts,
                            arrival=time.time(), size=size, offset=0)
        source = _OneJob(Job(envelope, recipients[0].rpartition("@")[2], rcpts, path))
        policy = ClientPolicy(hostname=hostname, mx_name=endpoint, tls="none",
                              command_timeout=timeout, greeting_timeout=timeout,
                              data_init_timeout=timeout, data_block_timeout=timeout,
                              final_timeout=timeout, max_messages=1)
        result = await run_session(clientFromString(reactor, endpoint), policy, source,
                                   reactor=reactor)
    finally:
        await threads.deferToThreadPool(reactor, reactor.getThreadPool(), os.unlink, path)
    failed = {r: o for r, o in source.outcomes.items() if o.kind != DELIVERED}
    missing = [r for r in recipients if r not in source.outcomes]
    if failed or missing:
        why = "; ".join(f"<{r}>: {o.reply}" for r, o in failed.items())
        if missing:
            why = "; ".join(filter(None, [why, result.error or
                                          f"not sent to {', '.join(missing)}"]))
        raise ReleaseFailed(f"release to {endpoint} failed: {why}")
