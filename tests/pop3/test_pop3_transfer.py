"""The RETR/TOP transforms: any chunking gives the bytes of transforming the whole message."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailhost.pop3.transfer import DotStuffer, MessageSender, TopFilter
from mailhost.store.reader import MessageReader

# Messages made of the interesting pieces: dots, CRLFs, lone CR/LF, text.
pieces = st.sampled_from([b".", b"..", b"\r\n", b"\r", b"\n", b"a", b"Subject: x", b" "])
messages = st.lists(pieces, max_size=60).map(b"".join)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def reference_stuff(data: bytes) -> bytes:
    """Stuffing done the obvious way, on the whole message at once."""
    lines = data.split(b"\n")
    return b"\n".join(b"." + line if line.startswith(b".") else line for line in lines)


def reference_top(data: bytes, n: int) -> bytes:
    """Line by line: every header line, the first empty (CRLF) line, then n body lines."""
    lines = _lines(data)
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        if line == b"\r\n":
            return b"".join(out + lines[i + 1 : i + 1 + n])
    return data


def _lines(data: bytes) -> list[bytes]:
    """Split after each LF (the only line end that counts), keeping it."""
    parts = data.split(b"\n")
    return [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


@settings(max_examples=400, deadline=None)
@given(messages, st.lists(st.integers(min_value=0), max_size=8))
def test_stuffing_is_chunking_invariant(data, cuts):
    stuffer = DotStuffer()
    out = b"".join(stuffer.feed(c) for c in chunked(data, cuts))
    assert out == reference_stuff(data)
    terminator = stuffer.terminator()
    assert (out + terminator).endswith(b"\r\n.\r\n") or (not data and terminator == b".\r\n")
    if data.endswith(b"\r\n"):
        assert terminator == b".\r\n"  # never a doubled line end, never \r\r\n


@settings(max_examples=400, deadline=None)
@given(messages, st.integers(min_value=0, max_value=6), st.lists(st.integers(min_value=0),
                                                                 max_size=8))
def test_top_is_chunking_invariant(data, n, cuts):
    top = TopFilter(n)
    out = b""
    for chunk in chunked(data, cuts):
        out += top.feed(chunk)
        if top.done:
            break
    assert out == reference_top(data, n)


def sync_run(fn, *args):
    """The reader's thread hop, made synchronous for StringTransport tests."""
    return defer.succeed(fn(*args))


class ManualRun:
    """The reader's thread hop, completed by hand: lets a test hold reads in flight."""

    def __init__(self) -> None:
        self.pending: list[tuple[defer.Deferred, bytes]] = []

    def __call__(self, fn, *args):
        d = defer.Deferred()
        self.pending.append((d, fn(*args)))
        return d

    def land(self) -> None:
        d, data = self.pending.pop(0)
        d.callback(data)


def test_sender_streams_with_backpressure_and_stuffs_across_chunks():
    data = b".a\r\n" + b"x" * 100 + b"\r\n.b\r\n" + b"y" * 7
    transport = StringTransport()
    f = io.BytesIO(data)
    clock = Clock()
    sender = MessageSender(transport, MessageReader(f, None, chunk_size=4, run=sync_run), reactor=clock)
    d = sender.start()
    # Without push-back it still yields to the reactor after a few chunks.
    assert transport.producer is sender and transport.streaming and not d.called
    assert clock.getDelayedCalls()
    while not d.called:
        clock.advance(0)
    assert d.result == len(data)
    assert transport.value() == b"..a\r\n" + b"x" * 100 + b"\r\n..b\r\n" + b"y" * 7 + b"\r\n.\r\n"
    assert f.closed and transport.producer is None


def test_small_retr_was_three_queued_writes_now_one_write_with_its_status_line():
    """A small message is read at once: its status line, body and terminator go to the
    session's writer in one piece (one send), not as three transport writes."""
    transport = StringTransport()
    writes: list[bytes] = []
    data = b"Subject: s\r\n\r\n.dot\r\nbody\r\n"
    sender = MessageSender(transport, MessageReader(io.BytesIO(data), len(data), run=sync_run),
                           reactor=Clock(), write=writes.append, prefix=b"+OK 27 octets\r\n")
    d = sender.start()
    assert d.called and d.result == len(data)
    assert writes == [b"+OK 27 octets\r\nSubject: s\r\n\r\n..dot\r\nbody\r\n.\r\n"]
    assert transport.value() == b"" and transport.producer is None


def test_sender_waits_for_reads_and_for_the_transport():
    transport = StringTransport()
    f = io.BytesIO(b"z" * 100)
    run = ManualRun()
    reader = MessageReader(f, None, chunk_size=10, run=run)
    sender = MessageSender(transport, reader, reactor=Clock())
    d = sender.start()
    assert transport.value() == b"" and len(run.pending) == 1  # first read in flight
    run.land()
    assert transport.value() == b"z" * 10 and len(run.pending) == 1  # reading one ahead
    sender.pauseProducing()  # what a full send buffer does
    run.land()  # the read in flight still lands and is written, then nothing more
    assert len(transport.value()) == 20
    assert len(run.pending) == 1  # the reader stays one chunk ahead
    run.land()
    assert len(transport.value()) == 20 and not d.called
    sender.resumeProducing()
    while run.pending:
        run.land()
    assert transport.value() == b"z" * 100 + b"\r\n.\r\n" and d.result == 100
    assert f.closed


def test_sender_stop_producing_closes_the_file_once_the_read_lands():
    transport = StringTransport()
    f = io.BytesIO(b"z" * 1000)
    run = ManualRun()
    sender = MessageSender(transport, MessageReader(f, None, chunk_size=10, run=run), reactor=Clock())
    d = sender.start()
    failures = []
    d.addErrback(failures.append)
    sender.stopProducing()
    assert failures and failures[0].check(ConnectionError)
    assert not f.closed  # a read is still running on the file in the pool
    run.land()
    assert f.closed


def test_read_error_fails_the_transfer():
    class Broken(io.BytesIO):
        def read(self, n=-1):
            raise OSError("I/O error")

    transport = StringTransport()
    f = Broken(b"x")
    sender = MessageSender(transport, MessageReader(f, None, chunk_size=10, run=lambda fn, *a: defer.maybeDeferred(fn, *a)),
                           reactor=Clock())
    failures = []
    sender.start().addErrback(failures.append)
    assert failures and failures[0].check(OSError) and f.closed


def test_interfaces_and_exports():
    from twisted.internet.interfaces import IPushProducer
    from zope.interface.verify import verifyObject

    import mailhost.pop3

    sender = MessageSender(StringTransport(), MessageReader(io.BytesIO(b""), None, run=sync_run).start(),
                           reactor=Clock())
    assert verifyObject(IPushProducer, sender)
    assert mailhost.pop3.__all__ == ["POP3Factory", "MaildropLocks", "FileMaildropLocks"]
