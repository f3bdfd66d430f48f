"""The Maildir watch's own inotify event reader (``maildir_watch._Notifier._doRead``):
whatever way the kernel's bytes are split across reads, every event reaches its
watch's callbacks once, whole, in order, as (file name, mask)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor

from mailhost.store._maildir import maildir_watch

_names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="/"),
                 min_size=0, max_size=40)
_events = st.lists(st.tuples(st.sampled_from([1, 2, -1]), st.integers(0, 2**31 - 1), _names),
                   max_size=30)


def _pack(wd: int, mask: int, name: str) -> bytes:
    raw = name.encode("utf-8")
    padded = raw + b"\0" * (16 - len(raw) % 16) if raw else b""  # the kernel pads names
    return struct.pack("=iIII", wd, mask, 0, len(padded)) + padded


class _Watch:
    def __init__(self) -> None:
        self.callbacks = [self.heard]
        self.got: list[tuple[str, int]] = []

    def heard(self, name: str, mask: int) -> None:
        self.got.append((name, mask))


@settings(max_examples=200, deadline=None)
@given(_events, st.lists(st.integers(1, 64), max_size=20))
def test_events_split_anywhere_arrive_whole_and_in_order(events, cuts):
    notifier = maildir_watch._Notifier(reactor, lambda n: None)
    try:
        watches = {1: _Watch(), 2: _Watch()}
        notifier._watchpoints.update(watches)
        events = [(wd, mask & ~0x400, name) for wd, mask, name in events]  # no DELETE_SELF
        data = b"".join(_pack(*e) for e in events)
        at = 0
        for cut in cuts:
            notifier._doRead(data[at:at + cut])
            at += cut
        notifier._doRead(data[at:])
        for wd, watch in watches.items():
            assert watch.got == [(name, mask) for w, mask, name in events if w == wd]
        assert notifier._buffer == b""
    finally:
        notifier._watchpoints.clear()
        notifier.loseConnection()
