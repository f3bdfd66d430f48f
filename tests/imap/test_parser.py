"""The IMAP command tokenizer and argument grammar (RFC 3501 section 9)."""

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.imap import parser
from mailhost.imap.parser import Atom, Literal, Literal8, ParseError, parse_command


def cmd(*segments: bytes) -> parser.Command:
    return parse_command(list(segments))


def test_nul_is_refused_in_a_literal_and_kept_in_a_literal8():
    """RFC 9051 9: literal = "{" number64 ["+"] "}" CRLF *CHAR8 (no NUL); literal8 holds
    any OCTET (RFC 3516)."""
    with pytest.raises(ParseError, match="NUL in a literal"):
        cmd(b"A1 APPEND INBOX {3}", b"a\0b", b"")
    got = cmd(b"A1 APPEND INBOX ~{3}", b"a\0b", b"").args[1]
    assert type(got) is Literal8 and got == b"a\0b"
    assert type(cmd(b"A1 APPEND INBOX {3}", b"abc", b"").args[1]) is Literal


def test_literal_marker():
    assert parser.literal_marker(b"A1 LOGIN {5}") == (5, False)
    assert parser.literal_marker(b"A1 APPEND INBOX {123+}") == (123, True)
    assert parser.literal_marker(b"A1 LOGIN {5} x") is None
    assert parser.literal_marker(b"A1 NOOP") is None
    assert parser.literal_marker(b"{x}") is None


def test_simple_commands():
    c = cmd(b"a001 CAPABILITY")
    assert (c.tag, c.name, c.uid, c.args) == ("a001", "CAPABILITY", False, [])
    c = cmd(b"a2 select INBOX")
    assert c.name == "SELECT" and c.args == ["INBOX"] and isinstance(c.args[0], Atom)


def test_regression_quoted_backslash_escape_is_not_bad():
    """Twisted's tokenizer answered BAD to a quoted \\" (TWISTED-MAIL-NOTES)."""
    c = cmd(b'A1 LOGIN "al\\"ice" "p\\\\w d\xc3\xa9"')
    assert c.args == [b'al"ice', "p\\w d\u00e9".encode()]
    assert not isinstance(c.args[0], Atom)


def test_regression_literals_anywhere_and_literal_plus():
    """Twisted took a literal only as the last token and had no LITERAL+."""
    c = cmd(b"A1 LOGIN {5}", b"alice", b" {6+}", b"se cre", b"")
    assert c.args == [b"alice", b"se cre"]
    assert all(isinstance(a, Literal) for a in c.args)
    c = cmd(b"A2 LIST {0}", b"", b' "*"')
    assert c.args == [b"", b"*"]
    c = cmd(b"A3 STATUS (MESSAGES {2}", b"xx", b" UNSEEN)")
    assert c.args == [[Atom("MESSAGES"), b"xx", Atom("UNSEEN")]]


def test_literal_length_mismatch():
    with pytest.raises(ParseError) as e:
        cmd(b"A1 LOGIN {5}", b"abc", b"")
    assert e.value.tag == "A1"


def test_regression_nil_stays_an_atom_and_sections_keep_spaces():
    """parseNestedParens turned NIL into None."""
    c = cmd(b"A1 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (DATE FROM)]<0.100> NIL)")
    assert c.uid and c.name == "FETCH"
    assert c.args[1] == ["FLAGS", "BODY.PEEK[HEADER.FIELDS (DATE FROM)]<0.100>", "NIL"]
    assert c.args[1][2].is_nil


def test_gmail_style_mailbox_atom():
    c = cmd(b"A1 SELECT [Gmail]/All")
    assert c.args == ["[Gmail]/All"]


def test_regression_unbalanced_open_bracket_is_an_atom_char():
    """Issue 16: ``SELECT foo[bar`` and ``LIST "" foo[%`` were BAD "Unbalanced [";
    "[" is an ATOM-CHAR, only "]" is a resp-special."""
    assert cmd(b"A1 SELECT foo[bar").args == ["foo[bar"]
    assert cmd(b'A1 LIST "" foo[%').args == [b"", "foo[%"]
    assert cmd(b"A1 SELECT a[b[c] d").args == ["a[b[c]", "d"]
    assert cmd(b"A1 SELECT [").args == ["["]
    assert cmd("A1 SELECT x[ä".encode()).args == ["x[ä"]


def test_regression_nil_is_a_flag_keyword():
    """Issue 16: ``STORE 1 +FLAGS NIL`` and ``+FLAGS (NIL)`` were BAD."""
    assert parser.parse_store(cmd(b"A1 STORE 1 +FLAGS NIL").args[1:]) == ("add", False, ["NIL"])
    assert parser.parse_store(cmd(b"A1 STORE 1 +FLAGS (nil $X)").args[1:]) == (
        "add", False, ["nil", "$X"])


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b" NOOP",
        b"A1",
        b"A1 ",
        b'A1 LOGIN "unterminated',
        b'A1 LOGIN "bad\\escape"',
        b"A1 FETCH 1 (FLAGS",
        b"A1 FETCH 1 FLAGS)",
        b'A1 LOGIN "a""b"',
        b"A1 LOGIN a{5} b",
        b"A1 UID NOOP",
        b"A1 X" + b"(" * 40 + b")" * 40,
        b"A1 SELECT \xff",
    ],
)
def test_malformed(line):
    with pytest.raises(ParseError):
        cmd(line)


def test_error_carries_tag():
    with pytest.raises(ParseError) as e:
        cmd(b'tag7 LOGIN "x')
    assert e.value.tag == "tag7"
    with pytest.raises(ParseError) as e:
        cmd(b"+bad NOOP")
    assert e.value.tag is None


def test_sequence_sets():
    s = parser.parse_sequence_set(Atom("2,4:7,9,12:*"))
    assert s.resolve(15) == [2, 4, 5, 6, 7, 9, 12, 13, 14, 15]
    assert s.contains(13, 15) and not s.contains(8, 15)
    assert parser.parse_sequence_set(Atom("*:4")).resolve(2) == [2]
    assert parser.parse_sequence_set(Atom("1:*")).resolve(0) == []
    for bad in ("0", "1:0", "a", "1,,2", "", "1:2:3", "4294967296"):
        with pytest.raises(ParseError):
            parser.parse_sequence_set(Atom(bad))


def test_fetch_macros_and_items():
    names = [i.name for i in parser.parse_fetch_items([Atom("ALL")])]
    assert names == ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"]
    assert [i.name for i in parser.parse_fetch_items([Atom("fast")])][-1] == "RFC822.SIZE"
    assert [i.name for i in parser.parse_fetch_items([Atom("FULL")])][-1] == "BODY"
    items = parser.parse_fetch_items(
        [[Atom("uid"), Atom("BODY.PEEK[1.2.HEADER]<10.20>"), Atom("body[]"),
          Atom("BODY[3.MIME]"), Atom("BODY[HEADER.FIELDS.NOT (Received \"X-A\")]")]]
    )
    assert items[0].name == "UID"
    assert items[1].peek and items[1].section == parser.Section((1, 2), "HEADER")
    assert items[1].partial == (10, 20) and items[1].response_name == "BODY[1.2.HEADER]<10>"
    assert items[2].response_name == "BODY[]"
    assert items[3].response_name == "BODY[3.MIME]"
    assert items[4].section.fields == ("Received", "X-A")
    assert items[4].response_name == "BODY[HEADER.FIELDS.NOT (RECEIVED X-A)]"


@pytest.mark.parametrize(
    "att",
    ["BODY[MIME]", "BODY[0]", "BODY[1.]", "BODY[HEADER.FIELDS]", "BODY[TEXT (A)]",
     "BODY[]<1>", "BODY[]<1.0>", "BINARY[1.TEXT]", "BINARY.SIZE[1]<0.5>", "BINARY[0]", "BODY[1.X]", "BODY[HEADER.FIELDS ()]"],
)
def test_bad_fetch_atts(att):
    with pytest.raises(ParseError):
        parser.parse_fetch_items([Atom(att)])


def test_store_and_flags():
    assert parser.parse_store([Atom("+FLAGS.SILENT"), [Atom("\\seen"), Atom("$Junk")]]) == (
        "add", True, ["\\Seen", "$Junk"])
    assert parser.parse_store([Atom("-flags"), Atom("\\Deleted")]) == (
        "remove", False, ["\\Deleted"])
    assert parser.parse_store([Atom("FLAGS"), []]) == ("replace", False, [])
    with pytest.raises(ParseError):
        parser.parse_store([Atom("FLAGS"), [Atom("\\Bogus")]])
    with pytest.raises(ParseError):
        parser.parse_store([Atom("LABELS"), []])
    with pytest.raises(ParseError):
        parser.parse_store(cmd("A1 STORE 1 FLAGS (caf\u00e9)".encode()).args[1:])


def test_8bit_atoms_are_utf8():
    assert cmd("A1 SEARCH FROM m\u00fcller".encode()).args[1] == "m\u00fcller"
    assert parser.as_string(Atom("m\u00fcller")) == "m\u00fcller".encode()


def test_append():
    c = cmd(b'A APPEND saved-messages (\\Seen) " 7-Feb-1994 21:52:25 -0800" {5}', b"hello",
            b"")
    mailbox, [(flags, date, msg)] = parser.parse_append(c.args)
    assert mailbox == b"saved-messages" and flags == ["\\Seen"] and msg == b"hello"
    assert date == datetime.datetime(1994, 2, 8, 5, 52, 25,
                                     tzinfo=datetime.UTC).timestamp()
    assert parser.parse_append(cmd(b"A APPEND INBOX {1}", b"x", b"").args)[1] == [
        ([], None, b"x")]
    with pytest.raises(ParseError):
        parser.parse_append(cmd(b'A APPEND INBOX "quoted"').args)
    # MULTIAPPEND (RFC 3502): each message with its own flags and date.
    c = cmd(b"A APPEND INBOX (\\Seen) {1}", b"x", b' " 7-Feb-1994 21:52:25 -0800" {1}', b"y",
            b" {1}", b"z", b"")
    assert [(f, d is not None, m) for f, d, m in parser.parse_append(c.args)[1]] == [
        (["\\Seen"], False, b"x"), ([], True, b"y"), ([], False, b"z")]
    with pytest.raises(ParseError):
        parser.parse_append(cmd(b"A APPEND INBOX {1}", b"x", b" (\\Seen)").args)


def test_dates():
    assert parser.parse_date("1-Feb-1994") == datetime.date(1994, 2, 1)
    assert parser.parse_date(b"01-feb-1994") == datetime.date(1994, 2, 1)
    for bad in ("31-Feb-1994", "1-Foo-1994", "1994-02-01"):
        with pytest.raises(ParseError):
            parser.parse_date(bad)
    with pytest.raises(ParseError):
        parser.parse_datetime(b"7-Feb-1994 21:52:25")


def test_status_items():
    assert parser.parse_status_items([Atom("uidnext"), Atom("MESSAGES")]) == [
        "UIDNEXT", "MESSAGES"]
    with pytest.raises(ParseError):
        parser.parse_status_items([Atom("BOGUS")])
    assert parser.parse_status_items([Atom("size"), Atom("AppendLimit")]) == ["SIZE", "APPENDLIMIT"]


def test_search_rfc3501_examples():
    K = parser.SearchKey
    line = b'A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"'
    _, key = parser.parse_search(cmd(line).args)
    assert key == K("AND", (K("FLAG", ("\\Flagged",)),
                            K("SINCE", (datetime.date(1994, 2, 1),)),
                            K("NOT", (K("ADDRESS", ("FROM", b"Smith")),))))
    charset, key = parser.parse_search(cmd(b"A284 SEARCH CHARSET UTF-8 TEXT {6}",
                                           b"XXXXXX", b"").args)
    assert charset == "UTF-8" and key == K("TEXT", (b"XXXXXX",))
    _, key = parser.parse_search(cmd(b"A SEARCH OR (1:3 UNSEEN) UID 5:* KEYWORD $x").args)
    assert key.op == "AND" and key.args[0].op == "OR" and key.args[0].args[1].op == "UID"
    assert key.args[1] == K("FLAG", ("$x",))
    _, key = parser.parse_search(cmd(b"A SEARCH HEADER Message-ID <a@b> LARGER 10").args)
    assert key.args == (K("HEADER", ("MESSAGE-ID", b"<a@b>")), K("LARGER", (10,)))


def test_search_long_or_chains_but_bounded_depth():
    """Thunderbird-style "OR OR OR a b c d" over 100 terms parses; 300 levels do not."""
    terms = b" ".join(b"FROM a%d" % i for i in range(100))
    _, key = parser.parse_search(cmd(b"A SEARCH " + b"OR " * 99 + terms).args)
    assert key.op == "OR"
    for deep in (b"NOT " * 300 + b"ALL", b"OR ALL " * 300 + b"ALL"):
        with pytest.raises(ParseError):
            parser.parse_search(cmd(b"A SEARCH " + deep).args)


@pytest.mark.parametrize("args", [b"", b"FROM", b"OR SEEN", b"BOGUS", b"SINCE x", b"()",
                                  b"LARGER -1", b"CHARSET"])
def test_search_malformed(args):
    with pytest.raises(ParseError):
        parser.parse_search(cmd(b"A SEARCH " + args).args)


# ------------------------------------------------------------------------ hypothesis


@settings(max_examples=800, deadline=None)
@given(st.lists(st.binary(max_size=60), min_size=1, max_size=5))
def test_random_bytes_only_parse_error(segments):
    if len(segments) % 2 == 0:
        segments.append(b"")
    try:
        parse_command(segments)
    except ParseError:
        pass


@settings(max_examples=800, deadline=None)
@given(st.binary(max_size=80).map(lambda b: b"A1 FETCH 1 " + b))
def test_random_fetch_args_only_parse_error(line):
    try:
        c = parse_command([line])
        parser.parse_fetch_items(c.args[1:])
        parser.parse_search(c.args)
        parser.parse_store(c.args[1:])
        parser.parse_append(c.args)
    except ParseError:
        pass


#: ATOM-CHAR (RFC 3501): any CHAR except atom-specials ( ) { SP CTL % * " \\ and "]".
_ATOM_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '(){%*"\\]')


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=_ATOM_CHARS, min_size=1, max_size=30))
def test_any_atom_is_one_token(text):
    """Every string of ATOM-CHARs ("[" included, balanced or not) is one atom, as sent."""
    c = cmd(b"A1 SELECT " + text.encode("ascii"))
    assert c.args == [text] and isinstance(c.args[0], Atom)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=_ATOM_CHARS + "]", min_size=1, max_size=30),
       st.text(alphabet=_ATOM_CHARS + "]", min_size=1, max_size=10))
def test_astring_chars_then_a_second_argument(first, second):
    """ASTRING-CHARs ("]" too) followed by a space and another argument: two tokens
    unless a "[" in the first is closed by a "]" after the space (a section, as in
    ``BODY[HEADER.FIELDS (A B)]``)."""
    line = f"{first} {second}"
    tokens = cmd(b"A1 X " + line.encode("ascii")).args
    if tokens != [first, second]:
        assert tokens == [line] and "[" in first and "]" in second


_atom = st.text(alphabet="abcdefghijXYZ0123456789-_.:$/", min_size=1, max_size=8).filter(
    lambda s: s.upper() != "NIL")
_string = st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b
                                        and b"\0" not in b)
_token = st.recursive(
    st.one_of(_atom.map(Atom), _string,
              # NUL only in a literal8 (RFC 3516): a plain literal is *CHAR8.
              st.binary(max_size=20).map(lambda b: Literal8(b) if b"\0" in b else Literal(b))),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=12,
)


def _to_wire(tokens, segments):
    """Render tokens; literal data starts a new segment."""
    parts = []
    for t in tokens:
        if isinstance(t, list):
            segments[-1] += b" ".join(parts) + (b" " if parts else b"") + b"("
            parts = []
            _to_wire(t, segments)
            segments[-1] += b")"
            parts = [b""]  # force a separator before the next token
            continue
        if isinstance(t, Literal):
            marker = b"~{%d}" if isinstance(t, Literal8) else b"{%d}"
            segments[-1] += b" ".join(parts) + (b" " if parts else b"") + marker % len(t)
            segments.append(bytes(t))
            segments.append(b"")
            parts = [b""]
            continue
        if isinstance(t, Atom):
            parts.append(t.encode())
        else:
            parts.append(b'"' + t.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"')
    if parts:
        segments[-1] += b" ".join(parts)


def _normalize(tokens):
    return [_normalize(t) if isinstance(t, list) else t for t in tokens]


@settings(max_examples=150, deadline=None)
@given(st.lists(_token, max_size=6))
def test_round_trip(tokens):
    segments = [b"T1 XCMD"]
    if tokens:
        segments[-1] += b" "
    _to_wire(tokens, segments)
    c = parse_command(segments)
    assert c.tag == "T1" and c.name == "XCMD"
    assert _normalize(c.args) == _normalize(tokens)
    for got, want in zip(c.args, tokens, strict=True):
        assert type(got) is type(want)
