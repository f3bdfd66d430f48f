"""LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819), SPECIAL-USE selection (RFC 6154),
STATUS=SIZE (RFC 8438) and APPENDLIMIT (RFC 7889) over a real socket."""

from __future__ import annotations

import imaplib

import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from imapclient import IMAPClient

from mailhost.imap import parser
from mailhost.imap.list_extended import RETURN_OPTIONS, SELECT_OPTIONS, parse_list
from mailhost.imap.responses import Bad
from tests.imap.test_server_harness import imap_host_fixture, make_message, raw  # noqa: F401


async def _prepared(imap_host):
    host = await imap_host(kind="maildir", max_literal_size=10_000_000)
    account = await host.store.open_account("alice@example.test")
    for name in ("Work", "Work.Projects", "Work.Projects.Old", "Fruit", "Fruit.Apple",
                 "Fruit.Banana"):
        await account.create_folder(name)
    for name in await account.subscriptions():  # the default folders come subscribed
        await account.unsubscribe(name)
    for name in ("Work.Projects", "Fruit.Banana", "Gone"):
        await account.subscribe(name)
    sizes = [len(make_message(f"m{i}", size=1000 * (i + 1))) for i in range(3)]
    for i in range(3):
        await host.deliver(make_message(f"m{i}", size=1000 * (i + 1)),
                           flags=("\\Seen",) if i == 0 else ())
    return host, sizes


def _lines(c: imaplib.IMAP4, line: bytes) -> list[bytes]:
    return [x for x in raw(c, line) if not x.startswith(b"T ")]


@pytest_twisted.ensureDeferred
async def test_subscribed_selection_lists_subscribed_names_even_gone_ones(imap_host):
    host, _ = await _prepared(imap_host)

    def run():
        c = host.client()
        got = _lines(c, b'T LIST (SUBSCRIBED) "" "*"')
        assert got == [
            b'* LIST (\\HasNoChildren \\Subscribed) "." Fruit.Banana',
            b'* LIST (\\NonExistent \\HasNoChildren \\Subscribed) "." Gone',
            b'* LIST (\\HasChildren \\Subscribed) "." Work.Projects',
        ]
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_recursivematch_gives_childinfo_to_matching_parents(imap_host):
    host, _ = await _prepared(imap_host)

    def run():
        c = host.client()
        got = _lines(c, b'T LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
        assert got == [
            b'* LIST (\\HasChildren) "." Fruit ("CHILDINFO" ("SUBSCRIBED"))',
            b'* LIST (\\NonExistent \\HasNoChildren \\Subscribed) "." Gone',
            b'* LIST (\\HasChildren) "." Work ("CHILDINFO" ("SUBSCRIBED"))',
        ]
        assert raw(c, b'B LIST (RECURSIVEMATCH) "" "*"')[-1].startswith(b"B BAD")
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_several_patterns_and_the_subscribed_return_option(imap_host):
    host, _ = await _prepared(imap_host)

    def run():
        c = host.client()
        got = _lines(c, b'T LIST "" ("INBOX" "Work.*") RETURN (SUBSCRIBED CHILDREN)')
        assert got == [
            b'* LIST (\\HasNoChildren) "." INBOX',
            b'* LIST (\\HasChildren \\Subscribed) "." Work.Projects',
            b'* LIST (\\HasNoChildren) "." Work.Projects.Old',
        ]
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_special_use_selection_lists_only_special_folders(imap_host):
    host, _ = await _prepared(imap_host)

    def run():
        c = host.client()
        got = _lines(c, b'T LIST (SPECIAL-USE) "" "*" RETURN (SPECIAL-USE)')
        assert sorted(got) == sorted([
            b'* LIST (\\HasNoChildren \\Drafts) "." Drafts',
            b'* LIST (\\HasNoChildren \\Junk) "." Junk',
            b'* LIST (\\HasNoChildren \\Sent) "." Sent',
            b'* LIST (\\HasNoChildren \\Trash) "." Trash',
        ])
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_list_status_follows_each_selectable_mailbox(imap_host):
    host, sizes = await _prepared(imap_host)

    def run():
        c = host.client()
        got = _lines(c, b'T LIST "" "%" RETURN (STATUS (MESSAGES UNSEEN SIZE))')
        assert b'* LIST (\\HasNoChildren) "." INBOX' in got
        i = got.index(b'* LIST (\\HasNoChildren) "." INBOX')
        assert got[i + 1] == b"* STATUS INBOX (MESSAGES 3 UNSEEN 2 SIZE %d)" % sum(sizes)
        j = got.index(b'* LIST (\\HasChildren) "." Work')
        assert got[j + 1] == b"* STATUS Work (MESSAGES 0 UNSEEN 0 SIZE 0)"
        assert sum(1 for x in got if x.startswith(b"* STATUS")) == \
            sum(1 for x in got if x.startswith(b"* LIST"))
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_status_size_and_appendlimit_with_imapclient(imap_host):
    host, sizes = await _prepared(imap_host)

    def run():
        with IMAPClient("127.0.0.1", port=host.port, ssl=False, timeout=10) as c:
            c.login("alice@example.test", "secret")
            caps = c.capabilities()
            for cap in (b"LIST-EXTENDED", b"LIST-STATUS", b"STATUS=SIZE", b"APPENDLIMIT=10000000"):
                assert cap in caps
            st_ = c.folder_status("INBOX", ["MESSAGES", "SIZE", "APPENDLIMIT"])
            assert st_ == {b"MESSAGES": 3, b"SIZE": sum(sizes), b"APPENDLIMIT": 10_000_000}
            assert c.find_special_folder(b"\\Sent") == "Sent"

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_bad_list_syntax_is_bad(imap_host):
    host, _ = await _prepared(imap_host)

    def run():
        c = host.client()
        for line in (b'A LIST (FOO) "" "*"', b'A LIST "" "*" RETURN (STATUS)',
                     b'A LIST "" "*" RETURN (BOGUS)', b'A LIST "" ()', b'A LIST "" "*" RETURN',
                     b'A LIST "" "*" RETURN (STATUS (NOPE))', b'A LIST ()'):
            assert raw(c, line)[-1].startswith(b"A BAD"), line
        assert raw(c, b"N NOOP")[-1].startswith(b"N OK")
        c.logout()

    await host.in_thread(run)


words = st.sampled_from(sorted(SELECT_OPTIONS | RETURN_OPTIONS | {"BOGUS", "NIL", "RETURN"}))


@settings(max_examples=300, deadline=None)
@given(select=st.none() | st.lists(words, max_size=4), patterns=st.lists(
    st.text(alphabet="ab.*%", max_size=5), min_size=1, max_size=3),
    returns=st.none() | st.lists(words, max_size=4), trailing=st.booleans())
def test_parser_only_accepts_or_says_bad(select, patterns, returns, trailing):
    args: list = []
    if select is not None:
        args.append([parser.Atom(w) for w in select])
    args.append("")
    args.append(patterns if len(patterns) > 1 else patterns[0])
    if returns is not None:
        args += [parser.Atom("RETURN"), [parser.Atom(w) for w in returns]]
    if trailing:
        args.append(parser.Atom("X"))
    try:
        req = parse_list(args)
    except (Bad, parser.ParseError):
        return
    assert req.select <= SELECT_OPTIONS and req.returns <= RETURN_OPTIONS
    assert list(req.patterns) == patterns
    assert not trailing


@pytest_twisted.ensureDeferred
async def test_create_special_use(imap_host):
    host, _ = await _prepared(imap_host)

    def run():
        c = host.client()
        assert raw(c, b"C CREATE Archive.2026 (USE (\\Archive))")[-1].startswith(b"C OK")
        assert raw(c, b'L LIST "" "Archive*"')[:-1] == [
            b'* LIST (\\HasChildren) "." Archive',
            b'* LIST (\\HasNoChildren \\Archive) "." Archive.2026']
        assert raw(c, b"A CREATE Everything (USE (\\All))")[-1].startswith(b"A NO [USEATTR]")
        assert raw(c, b"B CREATE Both (USE (\\Sent \\Drafts))")[-1].startswith(b"B NO [USEATTR]")
        assert raw(c, b"D CREATE Odd (USE \\Sent)")[-1].startswith(b"D BAD")
        assert raw(c, b"E CREATE Odd (COLOR (red))")[-1].startswith(b"E BAD")
        assert raw(c, b'F LIST "" "%"')[-1].startswith(b"F OK")
        names = b"".join(raw(c, b'G LIST "" "*"'))
        assert b"Everything" not in names and b"Both" not in names and b"Odd" not in names
        c.logout()

    await host.in_thread(run)
