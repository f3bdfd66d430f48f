"""Units of SORT/THREAD/ESEARCH: base subject (RFC 5256 2.1), the threading algorithms
(RFC 5256 3), ``$`` and RETURN parsing, i;unicode-casemap, and hypothesis properties."""

from __future__ import annotations

import calendar
import datetime
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.imap import esearch, parser
from mailhost.imap.basesubject import base_subject
from mailhost.imap.casemap import casemap
from mailhost.imap.headerindex import Fields, parse_fields
from mailhost.imap.sort import parse_criteria, sort_uids
from mailhost.imap.thread import format_threads, item, ordered_subject, references


@pytest.mark.parametrize(("subject", "base", "reply"), [
    ("hello", "hello", False),
    ("Re: hello", "hello", True),
    ("RE: Re: re:hello", "hello", True),
    ("Fwd: hello", "hello", True),
    ("Fw: hello", "hello", True),
    ("fwd:hello", "hello", True),
    ("hello (fwd)", "hello", True),
    ("hello (FWD)  (fwd) ", "hello", True),
    ("[fwd: hello]", "hello", True),
    ("[Fwd: Re: hello (fwd)]", "hello", True),
    ("Re: [fwd: hello]", "hello", True),
    ("[list] hello", "hello", False),
    ("[list] Re: hello", "hello", True),
    ("Re: [list] hello", "hello", True),
    ("Re [list]: hello", "hello", True),
    ("[a] [b] hello", "hello", False),
    ("[list]", "[list]", False),  # removing the blob would leave nothing
    ("Re: [list]", "[list]", True),
    ("   hello   world  ", "hello world", False),
    ("hello\t\r\n world", "hello world", False),
    ("", "", False),
    ("Re:", "", True),
    ("Reply: hello", "Reply: hello", False),  # not a subj-refwd
    ("Fwdd: hello", "Fwdd: hello", False),
    ("[fwd: hello", "[fwd: hello", False),  # no trailer: not subj-fwd
])
def test_base_subject_rfc5256_examples(subject, base, reply):
    assert base_subject(subject) == (base, reply)


_SUBJECT_ALPHABET = st.sampled_from(
    ["Re:", "re: ", "Fwd:", "fw:", "(fwd)", "[", "]", "[list]", "[fwd:", " ", "\t", "a",
     "b", "hello", ":", "Ré", "ß"])


@given(st.lists(_SUBJECT_ALPHABET, max_size=12).map("".join))
@settings(max_examples=400, deadline=None)
def test_base_subject_is_a_fixed_point(subject):
    """Extraction is idempotent, never grows the text, and leaves no leader, trailer
    or surrounding white space behind."""
    base, _ = base_subject(subject)
    assert base_subject(base)[0] == base
    assert len(base) <= len(subject)
    assert base == base.strip(" ")
    assert not base.lower().endswith("(fwd)")
    assert not base.lower().startswith(("re:", "fw:", "fwd:"))


def _base_subject_with_every_regex(subject: str) -> tuple[str, bool]:
    """``base_subject`` as it was before the first/last character checks (issue 16):
    every regex tried at every step (the reference for the shortcut)."""
    from mailhost.imap import basesubject as b

    s = b._WSP_RUN.sub(" ", subject)
    reply = False
    while True:
        m = b._TRAILER.search(s)
        if m is not None:
            reply = reply or "(" in m.group(0)
            s = s[:m.start()]
        while True:
            changed = False
            while (m := b._LEADER.match(s)) is not None and m.group(0):
                reply = reply or bool(m.group(0).strip())
                s = s[m.end():]
                changed = True
            m = b._BLOB_RE.match(s)
            if m is not None and s[m.end():]:
                s = s[m.end():]
                changed = True
            if not changed:
                break
        if len(s) >= 6 and s[:5].lower() == "[fwd:" and s.endswith("]"):
            s = s[5:-1]
            reply = True
            continue
        return s, reply


@given(st.lists(st.one_of(_SUBJECT_ALPHABET, st.sampled_from(
    ["FWD:", "RE:", "R", "F", ")", "(", "\r\n", "\n", "  ", "(FWD)", "Re ", "[x] "])),
    max_size=12).map("".join))
@settings(max_examples=600, deadline=None)
def test_base_subject_shortcuts_change_nothing(subject):
    assert base_subject(subject) == _base_subject_with_every_regex(subject)


@given(st.text(max_size=30))
@settings(max_examples=200, deadline=None)
def test_base_subject_never_fails(subject):
    base, reply = base_subject(subject)
    assert isinstance(base, str) and isinstance(reply, bool)


def test_casemap_is_titlecase_then_nfkd():
    assert casemap("abc") == "ABC"
    assert casemap("München") == unicodedata.normalize("NFKD", "MÜNCHEN")
    assert casemap("ß") == "ß"  # its full titlecase is two characters: the simple one keeps it
    assert casemap("ǆ") == unicodedata.normalize("NFKD", "ǅ")  # titlecase, not uppercase
    assert casemap("Ä") == casemap("ä") == "A\u0308"


@given(st.text(max_size=20), st.text(max_size=20))
@settings(max_examples=200, deadline=None)
def test_casemap_is_case_blind_and_keeps_substrings(a, b):
    if a.isascii():
        assert casemap(a.lower()) == casemap(a.upper())
    if (a + b).isascii():
        assert casemap(a) in casemap(a + b)


# ----------------------------------------------------------------- `$` and RETURN


def test_dollar_parses_as_the_saved_set():
    s = parser.parse_sequence_set(parser.Atom("$"))
    assert s.saved and str(s) == "$"
    with pytest.raises(parser.ParseError):
        parser.parse_sequence_set(parser.Atom("$,1"))
    with pytest.raises(parser.ParseError):
        parser.parse_sequence_set(parser.Atom("1:$"))
    _, key = parser.parse_search([parser.Atom("$")])
    assert key.op == "SEQ" and key.args[0].saved
    _, key = parser.parse_search([parser.Atom("UID"), parser.Atom("$")])
    assert key.op == "UID" and key.args[0].saved


_SEQ_NUMBER = st.one_of(st.integers(1, 2**32 - 1).map(str), st.just("*"))
_SEQ_RANGE = st.one_of(_SEQ_NUMBER, st.tuples(_SEQ_NUMBER, _SEQ_NUMBER).map(":".join))


@given(st.one_of(st.just("$"), st.lists(_SEQ_RANGE, min_size=1, max_size=6).map(",".join)))
@settings(max_examples=300, deadline=None)
def test_sequence_set_round_trips(text):
    s = parser.parse_sequence_set(parser.Atom(text))
    assert parser.parse_sequence_set(parser.Atom(str(s))) == s
    assert s.saved == (text == "$")


@given(st.lists(st.integers(1, 50), unique=True), st.lists(st.integers(1, 60), unique=True))
@settings(max_examples=200, deadline=None)
def test_substituted_dollar_is_exactly_the_saved_uids(saved, probe):
    saved = sorted(saved)
    _, key = parser.parse_search([parser.Atom("$")])
    key = esearch.substitute_saved(key, saved)
    assert key.op == "UID"
    for u in probe:
        assert key.args[0].contains(u, 60) == (u in saved)


def test_return_options():
    assert esearch.parse_return([parser.Atom("ALL")]) == (None, [parser.Atom("ALL")])
    opts, rest = esearch.parse_return([parser.Atom("RETURN"), [], parser.Atom("ALL")])
    assert opts == {"ALL"} and rest == [parser.Atom("ALL")]
    opts, _ = esearch.parse_return([parser.Atom("return"), [parser.Atom("min"),
                                                             parser.Atom("SAVE")]])
    assert opts == {"MIN", "SAVE"}
    with pytest.raises(parser.ParseError):
        esearch.parse_return([parser.Atom("RETURN"), [parser.Atom("PARTIAL")]])
    with pytest.raises(parser.ParseError):
        esearch.parse_return([parser.Atom("RETURN"), parser.Atom("ALL")])
    assert esearch.response("t", True, frozenset({"SAVE"}), [1, 2]) == b""
    assert esearch.response("A1", False, frozenset({"ALL", "COUNT"}), [1, 2, 3, 7]) == \
        b'* ESEARCH (TAG "A1") ALL 1:3,7 COUNT 4\r\n'
    assert esearch.saved_result(frozenset({"SAVE", "MIN", "MAX"}), [5, 2, 9]) == [5, 9]
    assert esearch.saved_result(frozenset({"SAVE", "COUNT"}), [5, 2, 9]) == [2, 5, 9]


# ------------------------------------------------------------------------- SORT


def _fields(subject="", frm="", date=None, mid=None, parents=()) -> Fields:
    base, reply = base_subject(subject)
    return Fields(date, None, casemap(subject), casemap(base), reply, casemap(frm),
                  casemap(frm), casemap(frm), None, "", "", None, "", mid, tuple(parents))


_KEY = st.sampled_from(["ARRIVAL", "SIZE", "DATE", "SUBJECT", "FROM", "TO", "CC",
                        "DISPLAYFROM", "DISPLAYTO"])


@given(st.lists(st.tuples(st.text(max_size=8), st.text("abc", max_size=3),
                          st.one_of(st.none(), st.floats(0, 1e9)),
                          st.integers(0, 5), st.integers(0, 9)), max_size=25),
       st.lists(st.tuples(_KEY, st.booleans()), min_size=1, max_size=3))
@settings(max_examples=300, deadline=None)
def test_sort_is_a_permutation_ordered_by_its_keys(msgs, criteria):
    uids = list(range(1, len(msgs) + 1))
    fields = {u: _fields(s, f, d) for u, (s, f, d, _, _) in zip(uids, msgs, strict=True)}
    dates = {u: float(m[3]) for u, m in zip(uids, msgs, strict=True)}
    sizes = {u: m[4] for u, m in zip(uids, msgs, strict=True)}
    out = sort_uids(uids, criteria, fields, dates, sizes)
    assert sorted(out) == uids

    def key(u):
        f = fields[u]
        values = {"ARRIVAL": dates[u], "SIZE": sizes[u],
                  "DATE": f.date if f.date is not None else dates[u], "SUBJECT": f.base,
                  "FROM": f.from_mailbox, "TO": f.to_mailbox, "CC": f.cc_mailbox,
                  "DISPLAYFROM": f.from_display, "DISPLAYTO": f.to_display}
        return [values[name] for name, _ in criteria]

    for a, b in zip(out, out[1:], strict=False):
        ka, kb = key(a), key(b)
        for (name, reverse), x, y in zip(criteria, ka, kb, strict=True):
            if x != y:
                assert (x > y) if reverse else (x < y), (name, x, y)
                break
        else:
            assert a < b  # ties by sequence number


def test_parse_criteria():
    assert parse_criteria([parser.Atom("REVERSE"), parser.Atom("date"),
                           parser.Atom("SUBJECT")]) == [("DATE", True), ("SUBJECT", False)]
    for bad in ([], [parser.Atom("REVERSE")], [parser.Atom("REVERSE"), parser.Atom("REVERSE"),
                                                parser.Atom("DATE")], [parser.Atom("X")]):
        with pytest.raises(parser.ParseError):
            parse_criteria(bad)


def test_parse_fields_from_a_header_block():
    block = (b"From: =?utf-8?q?J=C3=BCrgen?= <jurgen@example.test>\r\n"
             b"To: a@example.test, B <b@example.test>\r\n"
             b"Cc: undisclosed-recipients:;\r\n"
             b"Subject: Re: [list] =?utf-8?q?M=C3=BCnchen?=\r\n"
             b"Date: Sun, 01 Nov 2026 23:30:00 -0200\r\n"
             b"Message-ID: <m1@x>\r\nIn-Reply-To: <p1@x> <p2@x>\r\n\r\n")
    f = parse_fields(block)
    assert f.base == casemap("München") and f.reply
    assert f.from_mailbox == "JURGEN" and f.from_display == casemap("Jürgen")
    assert f.to_mailbox == "A" and f.to_display == "A@EXAMPLE.TEST"
    assert f.cc_mailbox == "UNDISCLOSED-RECIPIENTS"  # a leading group: its name (Dovecot)
    assert f.date == calendar.timegm((2026, 11, 2, 1, 30, 0))  # in UTC
    assert f.day == datetime.date(2026, 11, 1).toordinal()  # SENTON: the header's own day
    assert parse_fields(b"Date: 1 Nov 26 23:30 EST\r\n\r\n").date == \
        calendar.timegm((2026, 11, 2, 4, 30, 0))  # the email.utils path
    assert f.message_id == "m1@x" and f.parents == ("p1@x",)
    f = parse_fields(b"Subject: x\r\nReferences: <a@x>\r\n <b@x>\r\nIn-Reply-To: <c@x>\r\n\r\n")
    assert f.parents == ("a@x", "b@x") and f.date is None and f.from_text is None


# ----------------------------------------------------------------------- THREAD


def _items(spec):
    """(subject, message-id, parents, date) -> Nodes numbered from 1."""
    return [item(n, date, _fields(subject, date=date, mid=mid, parents=parents))
            for n, (subject, mid, parents, date) in enumerate(spec, 1)]


def _references(spec):
    """The REFERENCES threads of ``spec``, its ids and chains read as iterators."""
    return references(_items(spec), iter([mid for _, mid, _, _ in spec]),
                      iter([tuple(parents) for _, _, parents, _ in spec]))


def test_orderedsubject_groups_by_base_subject_and_date():
    items = _items([("b", None, (), 5.0), ("Re: a", None, (), 3.0), ("a", None, (), 4.0),
                    ("Re: b", None, (), 1.0), ("c", None, (), 2.0)])
    # a-thread: 2 (3.0) then 3; b-thread: 4 (1.0) then 1; threads by first date
    assert format_threads(ordered_subject(items)) == b"(4 1)(5)(2 3)"
    items = _items([("x", None, (), 1.0), ("x", None, (), 2.0), ("x", None, (), 3.0)])
    assert format_threads(ordered_subject(items)) == b"(1 (2)(3))"


def test_references_rfc5256_shapes():
    spec = [
        ("a", "1", (), 1.0),
        ("Re: a", "2", ("1",), 2.0),
        ("Re: a", "3", ("1", "2"), 3.0),
        ("Re: a", "4", ("1", "2"), 4.0),
        ("Re: a", "5", ("1",), 5.0),
        ("b", "6", ("gone",), 6.0),
        ("c", "7", ("gone",), 7.0),
    ]
    assert format_threads(_references(spec)) == b"(1 (2 (3)(4))(5))((6)(7))"


def test_references_truncated_chain_and_missing_parents():
    # Message 2 (id 3) names only id 2; message 3 (id 2) arrives later naming id 1:
    # the chain is 1 -> id 2 -> id 3.
    spec = [("x", "1", (), 1.0), ("Re: x", "3", ("2",), 3.0), ("Re: x", "2", ("1",), 2.0)]
    assert format_threads(_references(spec)) == b"(1 3 2)"
    # A dummy chain (missing ids) is pruned: the message hangs under the real root.
    spec = [("x", "1", (), 1.0), ("Re: x", "2", ("1", "m1", "m2"), 2.0)]
    assert format_threads(_references(spec)) == b"(1 2)"


def test_references_loops_and_duplicates_are_harmless():
    spec = [("x", "1", ("2",), 1.0), ("x", "2", ("1",), 2.0), ("x", "1", (), 3.0),
            ("y", "3", ("3",), 4.0)]
    out = format_threads(_references(spec))
    assert sorted(int(n) for n in out.replace(b"(", b" ").replace(b")", b" ").split()) == \
        [1, 2, 3, 4]


def test_references_subject_merge():
    # Same base subject, no references: the reply goes under the original.
    spec = [("hello", "1", (), 1.0), ("Re: hello", "2", (), 2.0)]
    assert format_threads(_references(spec)) == b"(1 2)"
    # Neither a reply: both under a new dummy.
    spec = [("hello", "1", (), 1.0), ("hello", "2", (), 2.0)]
    assert format_threads(_references(spec)) == b"((1)(2))"
    # Empty subjects never merge.
    spec = [("", "1", (), 1.0), ("", "2", (), 2.0)]
    assert format_threads(_references(spec)) == b"(1)(2)"


@given(st.lists(st.tuples(st.sampled_from(["a", "Re: a", "b", "Re: b", ""]),
                          st.integers(0, 12), st.lists(st.integers(0, 12), max_size=4),
                          st.integers(0, 5)), max_size=20))
@settings(max_examples=300, deadline=None)
def test_every_message_appears_once_in_either_algorithm(spec):
    spec = [(s, str(m), tuple(str(p) for p in ps), float(d)) for s, m, ps, d in spec]
    for out in (format_threads(_references(spec)),
                format_threads(ordered_subject(_items(spec)))):
        numbers = [int(n) for n in out.replace(b"(", b" ").replace(b")", b" ").split()]
        assert sorted(numbers) == list(range(1, len(spec) + 1))
        assert out.count(b"(") == out.count(b")")


def test_deep_thread_needs_no_recursion():
    n = 5000
    spec = [("x", str(i), (str(i - 1),) if i else (), float(i)) for i in range(n)]
    out = format_threads(_references(spec))
    assert out == b"(" + b" ".join(b"%d" % i for i in range(1, n + 1)) + b")"
    # a comb: each message has a reply and a leaf
    spec = []
    for i in range(n // 2):
        spec.append(("x", f"c{i}", (f"c{i - 1}",) if i else (), float(2 * i)))
        spec.append(("x", f"l{i}", (f"c{i - 1}",) if i else ("none",), float(2 * i + 1)))
    assert format_threads(_references(spec)).count(b"(") >= n // 2


def test_references_makes_one_node_per_message_and_no_list_per_leaf():
    """Regression (issue 16: THREAD REFERENCES on 100k messages made an Item, a Node and
    an empty child list per message, and held every message-id and parent tuple in
    lists; its transient was ~41 MB of the peak): the message's own Node is the tree
    node, a leaf has no child list, and the ids and chains are read as one-shot
    iterators, in step with the nodes. An only child is held without a list."""
    n = 1000
    spec = [(f"{'Re: ' if i % 5 else ''}t{i // 5}", f"m{i}", (f"m{i - 1}",) if i % 5 else (),
             float(i)) for i in range(n)]
    nodes = _items(spec)
    read = [0]

    def ids():
        for k, (_, mid, _, _) in enumerate(spec):
            assert read[0] == k  # chains and ids advance together, one message at a time
            yield mid

    def chains():
        for _, _, parents, _ in spec:
            read[0] += 1
            yield parents

    roots = references(nodes, ids(), chains())
    seen, stack = [], list(roots)
    while stack:
        node = stack.pop()
        seen.append(node)
        stack.extend(node.kids())
    assert sorted(map(id, seen)) == sorted(map(id, nodes))  # no dummy, no other object
    assert sum(node.children is not None for node in seen) == n // 5 * 4
    assert not any(isinstance(node.children, list) for node in seen)  # only children
    assert format_threads(roots) == b"".join(
        b"(%d %d %d %d %d)" % tuple(range(i + 1, i + 6)) for i in range(0, n, 5))


_WORD = st.text("abcXYZ019.'-_!", min_size=1, max_size=6)


@given(st.one_of(st.none(), st.lists(_WORD, min_size=1, max_size=3).map(" ".join)),
       st.booleans(), st.text("abc.+-", min_size=1, max_size=6),
       st.text("abc.-", min_size=1, max_size=6), st.sampled_from(["", " ", "  "]))
@settings(max_examples=300, deadline=None)
def test_address_fast_paths_agree_with_the_envelope_parser(name, quote, local, host, pad):
    """The regex fast paths for ``a@b`` and ``Name <a@b>`` give what the full RFC 5322
    tokenizer (ENVELOPE's, and SEARCH FROM's) gives."""
    from mailhost.imap import envelope, search

    if name is None:
        value = f"{pad}{local}@{host}{pad}"
    else:
        value = f'{pad}"{name}"{pad}<{local}@{host}>' if quote else f"{name}{pad} <{local}@{host}>"
    f = parse_fields(b"From: " + value.encode() + b"\r\n\r\n")
    first = next(a for a in envelope.parse_addresses(value) if a.host is not None)
    assert f.from_mailbox == casemap(first.mailbox)
    spec = f"{first.mailbox}@{first.host}"
    assert f.from_display == casemap(first.name or spec)
    assert f.from_text == casemap(search._address_text(value.encode()))
