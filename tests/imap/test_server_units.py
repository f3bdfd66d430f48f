"""The server's pure pieces: interfaces, sequence-set resolution, LIST patterns, sets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import IPushProducer
from zope.interface.verify import verifyObject

from mailhost.imap.commands_mailbox import pattern_regex
from mailhost.imap.output import OutputGate
from mailhost.imap.parser import Atom, parse_sequence_set
from mailhost.imap.responses import format_set
from mailhost.imap.selected import BadSequence, SelectedMailbox
from mailhost.store.interfaces import IFolderListener, MessageInfo


class _Folder:
    def __init__(self, uids):
        self.infos = [MessageInfo(u, str(u), 10, frozenset(), 0.0) for u in uids]

    def messages(self):
        return list(self.infos)

    def get(self, uid):
        return next((i for i in self.infos if i.uid == uid), None)

    def add_listener(self, listener):
        pass

    def remove_listener(self, listener):
        pass


def _selected(uids):
    folder = _Folder(uids)
    sel = SelectedMailbox(folder, readonly=False)
    sel.load(folder.messages(), [])
    return sel


def test_interfaces():
    verifyObject(IFolderListener, _selected([1]))
    verifyObject(IPushProducer, OutputGate())


def test_output_gate_latches():
    gate = OutputGate()
    assert gate.wait().called
    gate.pauseProducing()
    d = gate.wait()
    assert not d.called
    gate.resumeProducing()
    assert d.called


_uids = st.lists(st.integers(1, 60), unique=True).map(sorted)
_ranges = st.lists(st.tuples(st.one_of(st.none(), st.integers(1, 70)),
                             st.one_of(st.none(), st.integers(1, 70))), min_size=1, max_size=4)


def _text(ranges):
    def n(x):
        return "*" if x is None else str(x)
    return ",".join(n(a) if a == b else f"{n(a)}:{n(b)}" for a, b in ranges)


@settings(max_examples=150, deadline=None)
@given(uids=_uids, ranges=_ranges)
def test_resolve_matches_naive_expansion(uids, ranges):
    sel = _selected(uids)
    seqset = parse_sequence_set(Atom(_text(ranges)))
    # UIDs: every existing UID inside any range; * is the largest UID.
    largest = uids[-1] if uids else 0
    want = sorted({u for u in uids if seqset.contains(u, largest)})
    assert sel.resolve(seqset, uid=True) == want
    # Sequence numbers: out of range is BAD, else the UIDs at those positions.
    n = len(uids)
    bounds = [(n if a is None else a, n if b is None else b) for a, b in ranges]
    if any(max(a, b) > n or min(a, b) < 1 for a, b in bounds):
        try:
            sel.resolve(seqset, uid=False)
        except BadSequence:
            return
        raise AssertionError("expected BadSequence")
    seqs = {s for a, b in bounds for s in range(min(a, b), max(a, b) + 1)}
    assert sel.resolve(seqset, uid=False) == [uids[s - 1] for s in sorted(seqs)]


def test_pending_updates_order_and_numbering():
    sel = _selected([1, 2, 3, 4, 5])
    sel.messages_expunged(sel.folder, [2, 4])
    sel.flags_changed(sel.folder, [MessageInfo(5, "5", 10, frozenset({"\\Seen"}), 0.0)])
    # Not allowed to expunge yet (e.g. after FETCH): numbers stay, flags go out.
    assert sel.pending_updates(allow_expunge=False) == [b"* 5 FETCH (FLAGS (\\Seen))\r\n"]
    assert sel.uids == [1, 2, 3, 4, 5]
    # Then, highest first so every number is valid when it is read.
    assert sel.pending_updates(allow_expunge=True) == [b"* 4 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"]
    assert sel.uids == [1, 3, 5]
    assert sel.seq_of(5) == 3 and sel.seq_of(4) is None


def test_list_patterns():
    assert pattern_regex("*").fullmatch("a.b.c")
    assert pattern_regex("%").fullmatch("a") and not pattern_regex("%").fullmatch("a.b")
    assert pattern_regex("a.%").fullmatch("a.b") and not pattern_regex("a.%").fullmatch("a.b.c")
    assert pattern_regex("inbox").fullmatch("INBOX")
    assert pattern_regex("InBox.%").fullmatch("INBOX.x")
    assert not pattern_regex("inbox").fullmatch("Inbox2")
    assert pattern_regex("a+b(c)").fullmatch("a+b(c)")  # regex metacharacters are literal


def test_format_set():
    assert format_set([1, 2, 3, 5, 7, 8]) == b"1:3,5,7:8"
    assert format_set([4]) == b"4"
    assert format_set([3, 1]) == b"3,1"  # order kept: COPYUID pairs positions
    assert format_set([]) == b""


def test_list_pattern_is_linear_not_backtracking():
    """Regression: a regex translation took 19 s for ten '%' against a 30-char name."""
    import time

    name = "a" * 30
    start = time.monotonic()
    assert not pattern_regex("%" * 5000 + "x").fullmatch(name)
    assert not pattern_regex("*%" * 2000 + "x").fullmatch(name)
    assert pattern_regex("a%a*" * 3).fullmatch(name)
    assert time.monotonic() - start < 1.0
