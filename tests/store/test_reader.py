"""MessageReader: the one reader of message bytes (IMAP, POP3, relay client, DSN)."""

from __future__ import annotations

import io
import threading

from twisted.internet import defer
from zope.interface.verify import verifyObject

from mailhost.store.interfaces import IMessageReader
from mailhost.store.reader import INLINE_READ, MessageReader, range_length, reader_for


def sync_run(fn, *args):
    return defer.succeed(fn(*args))


class ManualRun:
    """The reader's thread hop, completed by hand: lets a test hold reads in flight."""

    def __init__(self) -> None:
        self.pending: list[tuple[defer.Deferred, object]] = []

    def __call__(self, fn, *args):
        d = defer.Deferred()
        self.pending.append((d, fn(*args)))
        return d

    def land(self) -> None:
        d, data = self.pending.pop(0)
        d.callback(data)


def drain(reader) -> bytes:
    out, got = bytearray(), []
    while True:
        reader.read().addCallback(got.append)
        chunk = got.pop()
        if not chunk:
            return bytes(out)
        out += chunk


def test_verified():
    assert verifyObject(IMessageReader, MessageReader(io.BytesIO(b"x"), 1))


def test_short_read_ends_a_buffered_file_but_not_a_raw_one():
    run = ManualRun()
    reader = MessageReader(io.BytesIO(b"abc"), None, chunk_size=10, run=run).start()
    run.land()
    got = []
    reader.read().addCallback(got.append)
    reader.read().addCallback(got.append)
    assert got == [b"abc", b""] and not run.pending  # one read for a short message

    class Trickle(io.RawIOBase):  # a raw file may return less than asked, mid-file
        def __init__(self):
            self.parts = [b"ab", b"cd", b""]

        def readable(self):
            return True

        def read(self, n=-1):
            return self.parts.pop(0)

    reader = MessageReader(Trickle(), None, chunk_size=10, run=sync_run)
    got = []
    for _ in range(3):
        reader.read().addCallback(got.append)
    assert got == [b"ab", b"cd", b""]


def test_small_range_is_read_inline_big_one_in_the_pool():
    data = bytes(range(256)) * 1024  # 256 KiB
    run = ManualRun()
    small = MessageReader(io.BytesIO(data), INLINE_READ, offset=100, run=run)
    assert drain(small) == data[100:100 + INLINE_READ] and not run.pending
    big = MessageReader(io.BytesIO(data), INLINE_READ + 1, offset=5, chunk_size=50_000,
                        run=run)
    got = []
    big.read().addCallback(got.append)
    assert not got and len(run.pending) == 1  # nothing read on the caller's thread
    out = bytearray()
    while True:
        while run.pending:
            run.land()
        chunk = got.pop()
        if not chunk:
            break
        out += chunk
        big.read().addCallback(got.append)
    assert bytes(out) == data[5:5 + INLINE_READ + 1]


def test_a_forward_only_stream_is_skipped_in_the_pool():
    class Forward(io.RawIOBase):
        def __init__(self, data):
            self._data = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            return self._data.readinto(b)

    run = ManualRun()
    reader = MessageReader(io.BufferedReader(Forward(b"0123456789")), 3, offset=4, run=run)
    got = []
    reader.read().addCallback(got.append)
    assert not got and run.pending  # no seek possible: the skip is thread work
    run.land()
    assert got == [b"456"]


def test_call_runs_in_the_thread_pool_from_the_range_start():
    threads_seen = []

    def run(fn, *args):
        d = defer.Deferred()
        result = []

        def work():
            threads_seen.append(threading.current_thread())
            result.append(fn(*args))

        t = threading.Thread(target=work)
        t.start()
        t.join()
        d.callback(result[0])
        return d

    f = io.BytesIO(b"headerbody")
    reader = MessageReader(f, 4, offset=6, run=run)
    got = []
    reader.call(lambda file, n: file.read(n), 4).addCallback(got.append)
    assert got == [b"body"] and threads_seen[0] is not threading.current_thread()
    reader.close()
    assert f.closed


def test_close_waits_for_the_read_in_flight():
    run = ManualRun()
    f = io.BytesIO(b"z" * 1000)
    reader = MessageReader(f, None, chunk_size=10, run=run).start()
    reader.close()
    assert not f.closed
    run.land()
    assert f.closed


def test_range_length():
    assert range_length(10, 0, None) == 10
    assert range_length(10, 4, None) == 6
    assert range_length(10, 4, 3) == 3
    assert range_length(10, 8, 5) == 2
    assert range_length(10, 20, 5) == 0


def test_reader_for_reads_a_whole_message_to_the_end_and_a_range_exactly():
    """What is on disk is what POP3 RETR sends, whatever the index says; a range (IMAP
    BODY[]<o.n>) is exact."""
    data = b"0123456789"
    whole = reader_for(io.BytesIO(data), 4, run=sync_run)
    assert whole.size == 4 and drain(whole) == data
    part = reader_for(io.BytesIO(data), 10, 2, 5, run=sync_run)
    assert part.size == 5 and drain(part) == b"23456"
