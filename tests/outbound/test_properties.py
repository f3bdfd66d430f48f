"""Hypothesis: the streaming transforms give the same bytes however the input is chunked."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.message.dotstuffing import DotStuffer
from mailhost.outbound.dsn import enhanced_status
from mailhost.outbound.routing import split_hostport
from mailhost.outbound.spool import SpoolFiles
from mailhost.outbound.spool_writer import SpoolWriter

lines = st.lists(st.sampled_from([b".", b"..", b".x", b"x.", b"", b"Received: a", b"a\rb", b"z"]),
                 max_size=30)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def unstuff(wire: bytes) -> bytes:
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    body = wire[: -len(b".\r\n")]
    out = []
    for line in body.split(b"\r\n")[:-1]:
        assert line != b"."  # no early terminator
        out.append(line[1:] if line.startswith(b".") else line)
    return b"".join(x + b"\r\n" for x in out)


@settings(max_examples=300, deadline=None)
@given(lines, st.lists(st.integers(min_value=0, max_value=500), max_size=8))
def test_dot_stuffing_roundtrips_for_any_chunking(body_lines, cuts):
    body = b"".join(x + b"\r\n" for x in body_lines)
    s = DotStuffer()
    wire = b"".join(s(c) for c in chunked(body, cuts)) + s.terminator()
    assert unstuff(wire) == body


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(st.sampled_from([b"\r\n", b"\n", b"Received: x", b"a", b"\r",
                                       b"received:"]), max_size=30),
       cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=8))
def test_spool_writer_normalises_the_same_for_any_chunking(parts, cuts, tmp_path_factory):
    data = b"".join(parts)
    files = SpoolFiles(str(tmp_path_factory.mktemp("q")), fsync=False)
    files.ensure_sync()
    results = []
    for pieces in ([data], chunked(data, cuts)):
        w = SpoolWriter(files, "", None, None, lambda e: None, time.time)
        for p in pieces:
            w.write(p)
        w._hops.finish()
        if w._buffer is not None:  # small messages stay in memory until commit
            written = bytes(w._buffer)
        else:
            w._file.flush()
            with open(w._path, "rb") as f:
                written = f.read()
        results.append((written, w.hops))
        w.abort()
    assert results[0] == results[1]
    written, hops = results[0]
    assert b"\n" not in written.replace(b"\r\n", b"")
    expected = 0
    for line in written.split(b"\r\n"):
        if not line:
            break
        expected += line[:9].lower() == b"received:"
    assert hops == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_reply_parsers_never_crash(text):
    code = enhanced_status(text, True)
    assert code[0] in "245"
    try:
        split_hostport(text)
    except ValueError:
        pass


def _wire_reference(data: bytes) -> bytes:
    """DATA as RFC 5321 wants it, computed on the whole message at once."""
    norm = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    stuffed = norm.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + (b".\r\n" if not norm or norm.endswith(b"\r\n") else b"\r\n.\r\n")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b".", b"..", b"x", b"\r", b"\n", b"\r\n", b".\r\n", b"a\rb",
                                 b"\n."]), max_size=40).map(b"".join),
       st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_data_encoder_normalises_and_stuffs_the_same_for_any_chunking(data, cuts):
    """No bare CR or LF on the wire, dots stuffed at any chunk boundary."""
    from mailhost.message.crlf import CRLFNormalizer
    from mailhost.outbound.wire import DataEncoder

    enc = DataEncoder()
    wire = b"".join(enc(c) for c in chunked(data, cuts)) + enc.terminator()
    assert wire == _wire_reference(data)
    assert b"\r" not in wire.replace(b"\r\n", b"") and b"\n" not in wire.replace(b"\r\n", b"")
    norm = CRLFNormalizer()  # BDAT: the same line ends, no stuffing
    octets = b"".join(norm(c) for c in chunked(data, cuts))
    assert octets == data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
