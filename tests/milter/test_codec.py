"""The milter packet codec under hypothesis: round trips, and garbage that never
crashes (only ``MilterProtocolError``, which the client turns into its default
action)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhost.milter import protocol as p
from mailhost.milter.headers import HeaderEditor, fields_for_milter, split_fields

nonul = st.binary(max_size=200).map(lambda b: b.replace(b"\0", b"x"))
command = st.sampled_from(sorted(p.COMMANDS | p.REPLIES))


@given(st.lists(st.tuples(command, st.binary(max_size=3000)), max_size=8),
       st.integers(min_value=1, max_value=50))
def test_packets_round_trip_whatever_the_split(packets, step):
    wire = b"".join(p.encode_packet(c, d) for c, d in packets)
    decoder = p.PacketDecoder()
    got = []
    for i in range(0, len(wire), step):
        got += decoder.feed(wire[i:i + step])
    assert got == packets


@given(st.binary(max_size=2000))
def test_garbage_never_crashes_the_decoder(data):
    decoder = p.PacketDecoder(max_packet=1000)
    try:
        for c, _ in decoder.feed(data):
            assert len(c) == 1
    except p.MilterProtocolError:
        pass


def test_oversized_and_empty_packets_are_clear_errors():
    with pytest.raises(p.MilterProtocolError, match="over the limit"):
        p.PacketDecoder().feed(struct.pack("!I", p.MAX_PACKET + 1) + b"c")
    with pytest.raises(p.MilterProtocolError, match="length 0"):
        p.PacketDecoder().feed(b"\0\0\0\0")


@given(command, st.binary(max_size=300))
def test_any_reply_data_decodes_or_is_a_protocol_error(cmd, data):
    try:
        p.decode_reply(cmd, data)
    except p.MilterProtocolError:
        pass


@given(st.binary(max_size=300))
def test_any_command_data_decodes_or_is_a_protocol_error(data):
    for decode in (p.decode_connect, p.decode_args, p.decode_header, p.decode_macros,
                   p.decode_options):
        try:
            decode(data)
        except p.MilterProtocolError:
            pass


@given(nonul, st.sampled_from([b"4", b"6", b"U", b"L"]), st.integers(0, 65535), nonul)
def test_connect_round_trips(hostname, family, port, address):
    c = p.Connect(hostname, family, port, address) if family != b"L" else p.Connect(hostname, b"L")
    assert p.decode_connect(p.encode_connect(c)) == c


@given(st.sampled_from(sorted(p.COMMANDS)), st.lists(st.tuples(nonul, nonul), max_size=6))
def test_macros_round_trip(cmd, pairs):
    assert p.decode_macros(p.encode_macros(cmd, pairs)) == (cmd, pairs)


@given(st.lists(nonul, min_size=1, max_size=6))
def test_args_round_trip(args):
    assert p.decode_args(p.encode_args(*args)) == args


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
       st.lists(st.tuples(st.integers(0, 2**32 - 1), nonul), max_size=4))
def test_options_round_trip(version, actions, protocol, macros):
    o = p.Options(version, actions, protocol, tuple(macros))
    assert p.decode_options(p.encode_options(o)) == o
    assert p.decode_reply(p.R_OPTNEG, p.encode_reply(p.R_OPTNEG, o)) == o


@given(nonul, nonul, st.integers(0, 2**32 - 1))
def test_header_changes_round_trip(name, value, index):
    for cmd in (p.R_INSHEADER, p.R_CHGHEADER):
        change = p.HeaderChange(name, value, index)
        assert p.decode_reply(cmd, p.encode_reply(cmd, change)) == change
    assert p.decode_reply(p.R_ADDHEADER, p.encode_reply(
        p.R_ADDHEADER, p.HeaderChange(name, value))) == p.HeaderChange(name, value)


@pytest.mark.parametrize("raw, parsed", [
    (b"554 5.7.1 Spam message rejected", (554, "5.7.1", "Spam message rejected")),
    (b"451 Try again", (451, "", "Try again")),
    (b"550-5.7.1 one\r\n550 5.7.1 two", (550, "5.7.1", "one two")),
])
def test_reply_texts(raw, parsed):
    assert p.parse_reply_text(raw) == parsed


@pytest.mark.parametrize("raw", [b"250 ok", b"hello", b"55", b"550-a\r\n551 b", b"5500 x"])
def test_reply_texts_that_are_not_refusals_are_protocol_errors(raw):
    with pytest.raises(p.MilterProtocolError):
        p.parse_reply_text(raw)


header_line = st.tuples(st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,10}", fullmatch=True),
                        st.from_regex(r"[ -~]{0,30}", fullmatch=True),
                        st.lists(st.from_regex(r"[ \t][ -~]{0,20}", fullmatch=True), max_size=2))


@given(st.lists(header_line, max_size=8))
def test_header_block_splits_back_to_itself(fields):
    block = b"".join(
        f"{n}:{v}\r\n".encode() + b"".join(c.encode() + b"\r\n" for c in conts)
        for n, v, conts in fields) + b"\r\n"
    parsed, tail = split_fields(block)
    assert b"".join(parsed) + tail == block
    assert len(parsed) == len(fields)
    assert len(list(fields_for_milter(block, False))) == len(fields)


@given(st.lists(header_line, max_size=6), st.lists(st.tuples(
    st.sampled_from(["add", "insert", "change"]), nonul, st.binary(max_size=60),
    st.integers(0, 10)), max_size=6))
def test_header_edits_keep_a_well_formed_block(fields, edits):
    block = b"".join(f"{n}: {v}\r\n".encode() for n, v, _ in fields) + b"\r\n"
    editor = HeaderEditor(block)
    for kind, name, value, index in edits:
        getattr(editor, kind)(p.HeaderChange(name, value, index))
    out = editor.block
    assert out.endswith(b"\r\n\r\n") or out == b"\r\n"
    for line in out[:-2].split(b"\r\n")[:-1]:
        # every line is a field (name and colon) or a continuation: nothing injected
        assert line[:1] in (b" ", b"\t") or b":" in line
        assert b"\r" not in line and b"\n" not in line and b"\0" not in line
