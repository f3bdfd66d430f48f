"""The DATA reader and the hop counter, fed arbitrary chunkings (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.message.headers import received_header
from mailhost.message.hops import HopCounter
from mailhost.smtp.data import DataReader


def stuff(message: bytes) -> bytes:
    """What a correct client sends for ``message`` (CRLF lines): dot-stuffed + end."""
    lines = message.split(b"\r\n")
    out = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    return out + (b"" if message.endswith(b"\r\n") or not message else b"\r\n") + b".\r\n"


def run(stream: bytes, cuts: list[int], max_size: int = 10**9, max_line: int = 10**9):
    out: list[bytes] = []
    reader = DataReader(out.append, max_size, max_line)
    rest = None
    pos = 0
    for cut in sorted(set(c % (len(stream) + 1) for c in cuts)) + [len(stream)]:
        if rest is not None:
            break
        rest = reader.feed(stream[pos:cut])
        pos = cut
    if rest is not None and pos < len(stream):
        rest += stream[pos:]
    return b"".join(out), rest, reader


line = st.one_of(st.just(b""), st.just(b"."), st.just(b".."), st.binary(max_size=30).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), st.just(b". x"))
message = st.lists(line, max_size=20).map(lambda ls: b"".join(x + b"\r\n" for x in ls))


@settings(max_examples=150, deadline=None)
@given(message, st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
       st.binary(max_size=20))
def test_unstuff_round_trip_any_chunking(msg, cuts, trailer):
    body, rest, reader = run(stuff(msg) + trailer, cuts)
    assert body == msg
    assert rest == trailer
    assert reader.error is None and reader.size == len(msg)


def test_end_marker_split_everywhere():
    msg = b"a\r\n.b\r\n\r\n"
    stream = stuff(msg) + b"QUIT\r\n"
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            body, rest, _ = run(stream, [i, j])
            assert body == msg and rest == b"QUIT\r\n", (i, j)


def test_bare_lf_dot_does_not_end_data():
    body, rest, _ = run(b"a\n.\nb\r\n.\r\n", [])
    assert body == b"a\n.\nb\r\n" and rest == b""


def test_limits_keep_reading_to_the_end():
    body, rest, reader = run(b"x" * 50 + b"\r\n" + b"y\r\n" * 100 + b".\r\nNOOP\r\n", [7, 60],
                             max_size=100)
    assert reader.error.code == 552 and rest == b"NOOP\r\n"
    assert reader.size == 52 + 300
    _, rest, reader = run(b"ok\r\n" + b"z" * 2000 + b"\r\nMAIL FROM:<a@b>\r\n.\r\n", [3, 1000],
                          max_line=1000)
    assert reader.error.code == 500 and rest == b""
    _, _, reader = run(b"z" * 1000 + b"\r\n.\r\n", [], max_line=1000)
    assert reader.error is None


def test_hop_counter():
    hops = HopCounter()
    data = b"Received: a\r\nreceived: b\r\n Received: folded\r\nX: y\r\n\r\nReceived: body\r\n"
    for i in range(0, len(data), 3):
        hops.feed(data[i:i + 3])
    assert hops.count == 2 and hops.done


def test_received_header_shape():
    h = received_header(helo="c\x00lient", client_ip="::1", hostname="mx", protocol="ESMTPSA",
                        tid="ABC", recipient=None)
    lines = h.split(b"\r\n")
    assert lines[0] == b"Received: from c?lient ([IPv6:::1])"
    assert lines[1] == b"\tby mx (mailhost) with ESMTPSA id ABC;"
    assert h.endswith(b"\r\n") and all(len(x) < 200 for x in lines)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=12),
       st.lists(st.integers(min_value=0, max_value=600), max_size=6),
       st.integers(min_value=1, max_value=30))
def test_line_limit_is_exact_under_any_chunking(lengths, cuts, max_line):
    """The line-length error fires iff some line (without CRLF) exceeds the limit."""
    msg = b"".join(b"a" * n + b"\r\n" for n in lengths)
    body, rest, reader = run(stuff(msg), cuts, max_line=max_line)
    assert rest == b""
    too_long = max(lengths) > max_line
    assert (reader.error is not None) == too_long
    if not too_long:
        assert body == msg
