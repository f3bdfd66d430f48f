"""The relayed message on its way to the wire: streamed by a push producer, or read at
once when small enough for one ``BDAT n LAST`` chunk.

The body streams from the spool's ``MessageFile`` (which notices a recycled file)
through the store's one message reader (``spool.message_reader``: bounded chunks, read
off the reactor thread unless the message is small), so a 100 MB message costs a chunk
or two of memory; ``wire.DataEncoder`` writes CRLF line ends only and stuffs dots at
any chunk boundary.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from mailhost.message.crlf import CRLFNormalizer
from mailhost.outbound.spool import message_reader
from mailhost.outbound.wire import DataEncoder
from mailhost.store.interfaces import IMessageReader

# Messages up to this size are sent as one BDAT chunk when the server offers CHUNKING.
SMALL_MESSAGE = 64 * 1024


async def read_small_body(path: str, offset: int, size: int) -> bytes | None:
    """The message for a BDAT chunk, when small enough to take at once (one bounded
    read, by the reader's policy), with CRLF line ends; None sends it with DATA instead
    (which also reports a vanished file)."""
    try:
        reader = message_reader(path, offset, size)
    except OSError:
        return None
    data = bytearray()
    try:
        while len(data) <= SMALL_MESSAGE and (chunk := await reader.read()):
            data += chunk
    except OSError:
        return None
    finally:
        reader.close()
    if len(data) > SMALL_MESSAGE:
        return None
    crlf = CRLFNormalizer()
    out = crlf(bytes(data))
    return out + crlf.final_crlf()  # as DataEncoder.terminator does for DATA


@implementer(IPushProducer)
class BodySender:
    """Implements: IPushProducer. Feeds the message to the transport a chunk at a time
    as the reader delivers them, while the transport takes them, so memory stays at a
    chunk or two whatever the size.

    ``write`` takes each encoded chunk; ``chunk_taken`` is called as each read comes
    back (a new data block: the client restarts its timer); ``ended`` gets the
    terminator once the whole message is written; ``failed`` a reason if the spool
    file cannot be read.
    """

    def __init__(self, reader: IMessageReader, encoder: DataEncoder,
                 write: Callable[[bytes], object], chunk_taken: Callable[[], object],
                 ended: Callable[[bytes], None], failed: Callable[[str], None]) -> None:
        self.reader = reader
        self.encoder = encoder
        self.write = write
        self.chunk_taken = chunk_taken
        self.ended = ended
        self.failed = failed
        self.stopped = False
        self._paused = False
        self._reading = False
        self._pumping = False

    def pump(self) -> None:
        """Ask for chunks while the transport takes them; a read that is already done
        comes back at once, so this loops instead of recursing."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while not (self._paused or self.stopped or self._reading):
                self._reading = True
                self.reader.read().addCallbacks(self._got, self._failed)
        finally:
            self._pumping = False

    def _got(self, data: bytes) -> None:
        self._reading = False
        if self.stopped:
            return
        self.chunk_taken()
        if data:
            self.write(self.encoder(data))
            self.pump()
            return
        self.stop()
        self.ended(self.encoder.terminator())

    def _failed(self, failure: Failure) -> None:
        self._reading = False
        if not self.stopped:
            self.failed(f"spool file unreadable: {failure.value}")

    def pauseProducing(self) -> None:  # noqa: N802
        self._paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self._paused = False
        self.pump()

    def stopProducing(self) -> None:  # noqa: N802
        self.stop()

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.reader.close()
