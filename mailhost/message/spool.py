"""One message held while the pipeline's stages decide, in bounded memory.

The pipeline's modifiers put header fields on top of the message (the DKIM
signature, Authentication-Results) whose values are known only after the last body
octet, and its verdict (reject, Junk) decides which targets get the message at all.
So ``Delivery`` keeps the message here while the stages hash it, then writes the new
fields and the held message into the targets.

Small messages (the common case: up to ``memory_limit``) stay in memory. A larger
one goes to an unlinked temporary file, written and read back in the reactor's
thread pool in ``CHUNK``-sized pieces, so neither memory nor the reactor thread pays
for its size.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, threads

CHUNK = 64 * 1024


class Spool:
    """Append-only, then read once from an offset."""

    def __init__(self, reactor: Any = None, memory_limit: int = 256 * 1024,
                 directory: str | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.memory_limit = memory_limit
        self.directory = directory
        self.size = 0
        self._held: list[bytes] = []
        self._held_size = 0
        self._file: Any = None
        self._writing: defer.Deferred[Any] = defer.succeed(None)
        self._error: BaseException | None = None
        self._spilled = False  # some of the message went to the file

    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._held.append(data)
        self._held_size += len(data)
        self.size += len(data)
        if self.size > self.memory_limit and self._held_size >= CHUNK:
            self._flush()

    def _flush(self) -> None:
        data, self._held, self._held_size = b"".join(self._held), [], 0
        self._spilled = True
        self._writing.addCallback(lambda _: self._in_thread(self._write_file, data))
        self._writing.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        self._error = failure.value

    def _write_file(self, data: bytes) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self.directory, prefix="mailhost-spool-")
        self._file.write(data)

    def read(self, offset: int, sink: Callable[[bytes], defer.Deferred[None] | None]
             ) -> defer.Deferred[None]:
        """Give every octet from ``offset`` on to ``sink`` (on the reactor thread, in
        chunks); Deferred firing when done. A sink that returns a Deferred (a milter
        waiting for its reply) gets the next chunk only once it fires; may be called
        more than once (each stage that reads the body, then the targets)."""
        return defer.Deferred.fromCoroutine(self._read(offset, sink))

    async def _read(self, offset: int, sink: Callable[[bytes], defer.Deferred[None] | None]
                    ) -> None:
        if not self._spilled:
            data = b"".join(self._held)
            for i in range(offset, len(data), CHUNK):
                waiting = sink(data[i:i + CHUNK])
                if waiting is not None:
                    await waiting
            return
        if self._held:
            self._flush()
        await self._writing
        if self._error is not None:
            raise self._error
        await self._in_thread(self._file.seek, offset)
        while True:
            chunk = await self._in_thread(self._file.read, CHUNK)
            if not chunk:
                return
            waiting = sink(chunk)
            if waiting is not None:
                await waiting

    def close(self) -> None:
        """Forget the message; the file (already unlinked) closes once pending writes
        are done."""
        self._held, self._held_size = [], 0

        def close(_: object) -> None:
            if self._file is not None:
                f, self._file = self._file, None
                f.close()

        self._writing.addBoth(close)


__all__ = ["CHUNK", "Spool"]
