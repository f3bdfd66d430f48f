"""The hop counter shared by the SMTP loop check and the spool: any chunking, one count."""

from __future__ import annotations

import time

import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.message.hops import HopCounter
from mailhost.outbound.interfaces import QueueRecipient
from mailhost.outbound.spool import SpoolFiles
from mailhost.outbound.spool_writer import SpoolWriter
from tests.outbound.test_properties import chunked


def reference_count(message: bytes) -> int:
    """Received: fields of the header block, read the slow and obvious way."""
    *lines, last = message.split(b"\n")
    n = 0
    for line in lines:
        if line.removesuffix(b"\r") == b"":
            return n
        n += line[:9].lower() == b"received:"
    return n + (last[:9].lower() == b"received:")  # an unterminated last line


def count(pieces: list[bytes]) -> HopCounter:
    hops = HopCounter()
    for p in pieces:
        hops.feed(p)
    hops.finish()
    return hops


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b"Received: x", b"received:",
                                       b"RECEIVED:", b"Received", b":", b" ", b"a", b"Rec"]),
                      max_size=40),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_any_chunking_gives_the_reference_count(parts, cuts):
    data = b"".join(parts)
    assert count(chunked(data, cuts)).count == count([data]).count == reference_count(data)


def test_the_header_limit_is_in_header_octets_not_in_chunks():
    """One write may carry a whole message: a big body after it changes nothing."""
    headers = b"Received: a\r\nReceived: b\r\nSubject: s\r\n\r\n"
    assert count([headers + b"x" * (2 * HopCounter.MAX_HEADER_BYTES)]).count == 2


def test_a_header_block_past_the_limit_stops_counting():
    filler = b"X-Filler: " + b"y" * 980 + b"\r\n"
    head = b"Received: early\r\n" + filler * (HopCounter.MAX_HEADER_BYTES // len(filler) + 1)
    hops = count([head + b"Received: late\r\n\r\n"])
    assert hops.count == 1 and hops.done
    chunks = chunked(head + b"Received: late\r\n\r\n", list(range(0, len(head), 65536)))
    assert count(chunks).count == 1


@pytest_twisted.ensureDeferred
async def test_spool_writer_counts_a_message_written_in_one_piece(tmp_path):
    """The spool path with the shared counter: a large message in one write (as a library
    user of IOutboundQueue may do), an unterminated last header line in another."""
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    for message, expected in [
        (b"Received: a\nReceived: b\nReceived: c\n\n" + b"z" * (2 * 1024 * 1024), 3),
        (b"X: y\r\nReceived: no end of line", 1),
    ]:
        w = SpoolWriter(files, "a@b", None, None, lambda e: None, time.time)
        w.write(message)
        qid = await w.commit([QueueRecipient("x@y")])
        assert w.hops == expected
        assert files.load_envelope_sync(qid).hops == expected
