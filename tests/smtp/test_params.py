"""MAIL/RCPT argument parsing: examples plus hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.smtp.params import (
    Address,
    decode_xtext,
    parse_address,
    parse_mail_arg,
    parse_params,
    parse_rcpt_arg,
)
from mailhost.smtp.reply import Reply


@pytest.mark.parametrize("text,local,domain", [
    ("<alice@example.test>", "alice", "example.test"),
    ("<Alice@EXAMPLE.Test>", "Alice", "example.test"),
    ("alice@example.test", "alice", "example.test"),
    ('<"alice"@example.test>', "alice", "example.test"),
    ('<"a b\\"c"@example.test>', 'a b"c', "example.test"),
    ('<"user@other"@example.test>', "user@other", "example.test"),
    ("<@relay.test:bob@far.test>", "bob", "far.test"),
    ("<@a.test,@b.test:bob@far.test>", "bob", "far.test"),
    ("<user%other@example.test>", "user%other", "example.test"),
    ("<x@[127.0.0.1]>", "x", "[127.0.0.1]"),
    ("<x@[IPv6:::1]>", "x", "[IPv6:::1]"),
    ("<john..doe@example.test>", "john..doe", "example.test"),
])
def test_parse_address_examples(text, local, domain):
    addr = parse_address(text)
    assert (addr.local, addr.domain) == (local, domain)


@pytest.mark.parametrize("text", [
    "<>", "<alice>", "<alice@>", "<@example.test>", "<a@b..c>", "<a@-b.c>", "<a b@c.d>",
    '<"unterminated@c.d>', "<a@b.c", "<@a.test:>", "<@:a@b.c>", "<a@[1.2.3.4>", "<a\x00@b.c>",
    "<jörg@example.test>",
])
def test_parse_address_rejects(text):
    with pytest.raises(Reply) as e:
        parse_address(text)
    assert e.value.code in (501, 553)


def test_null_and_postmaster():
    assert parse_address("<>", allow_null=True).is_null
    assert parse_address("<Postmaster>", allow_postmaster=True) == Address("postmaster", "")
    assert parse_address("<jörg@exämple.test>", utf8=True).domain == "exämple.test"


def test_mail_and_rcpt_params():
    addr, p = parse_mail_arg(" <a@b.test> size=100 BODY=8bitmime SMTPUTF8 RET=hdrs ENVID=x+2By")
    assert str(addr) == "a@b.test"
    assert (p.size, p.body, p.smtputf8, p.ret, p.envid) == (100, "8BITMIME", True, "HDRS", "x+y")
    rcpt, rp = parse_rcpt_arg("<c@d.test> NOTIFY=success,delay ORCPT=rfc822;c+40d.test", False)
    assert rp.notify == frozenset({"SUCCESS", "DELAY"}) and rp.orcpt == "rfc822;c@d.test"
    for bad in ("<a@b.test> SIZE=x", "<a@b.test> BODY=BINARYMIME", "<a@b.test> FOO",
                "<a@b.test> SIZE=1 SIZE=2", "<a@b.test> RET=ALL", "<a@b.test> ENVID=a+zz"):
        with pytest.raises(Reply):
            parse_mail_arg(bad)
    with pytest.raises(Reply) as e:
        parse_mail_arg("<a@b.test> XFOO=1")
    assert e.value.code == 555


def test_str_round_trip_quotes_when_needed():
    assert str(parse_address('<"a b"@c.test>')) == '"a b"@c.test'
    assert str(parse_address('<"ab"@c.test>')) == "ab@c.test"


ATEXT = "abcxyzABC0129!#$%&'*+-/=?^_`{|}~"
label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)
domain = st.lists(label, min_size=1, max_size=4).map(".".join)
dot_local = st.lists(st.text(alphabet=ATEXT, min_size=1, max_size=10), min_size=1,
                     max_size=3).map(".".join)
quoted_local = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                       min_size=1, max_size=20)


@settings(max_examples=150, deadline=None)
@given(dot_local | quoted_local, domain)
def test_address_round_trip(local, dom):
    """Whatever we print for an address parses back to the same address."""
    addr = Address(local, dom)
    assert parse_address(f"<{addr}>") == addr


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=120))
def test_parsers_never_crash(text):
    """Any input either parses or raises Reply (a 5xx), never another exception."""
    for fn in (lambda: parse_mail_arg(text), lambda: parse_rcpt_arg(text, True),
               lambda: parse_rcpt_arg(text, False), lambda: parse_params(text)):
        try:
            fn()
        except Reply as e:
            assert 500 <= e.code < 600


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_xtext_decode_total(raw):
    text = raw.decode("latin-1")
    try:
        decode_xtext(text)
    except Reply as e:
        assert e.code == 501


def test_split_path_takes_the_first_bracket_unless_it_is_quoted():
    """Issue 18: a path with no quoted part is cut at its first '>' by str.find; a
    quoted local part may hold '>' (and escaped quotes), and is still walked."""
    from mailhost.smtp.params import split_path

    assert split_path("<a@example.test> SIZE=10 BODY=8BITMIME") == (
        "<a@example.test>", " SIZE=10 BODY=8BITMIME")
    assert split_path("  <a@example.test>") == ("<a@example.test>", "")
    assert split_path("<>") == ("<>", "")
    assert split_path('<"a>b"@example.test> SIZE=1') == ('<"a>b"@example.test>', " SIZE=1")
    assert split_path('<"a\\">"@example.test>') == ('<"a\\">"@example.test>', "")
    assert split_path("a@example.test SIZE=1") == ("a@example.test", " SIZE=1")
    with pytest.raises(Reply):
        split_path('<"a>b@example.test')
    with pytest.raises(Reply):
        split_path("<a@example.test")
