"""SEARCH evaluation over the IFolder API, against the memory and Maildir stores."""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.imap import parser, search
from tests.imap.test_fetch import deliver, store  # noqa: F401

MESSAGES = [
    # 1: plain, small
    b"From: Alice Smith <alice@example.test>\r\nTo: bob@example.test\r\n"
    b"Subject: Lunch on Friday\r\nDate: Fri, 8 Mar 2024 09:00:00 +0100\r\n\r\n"
    b"Shall we meet at noon?\r\n",
    # 2: encoded words in headers, base64 body in latin-1
    b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <jm@example.test>\r\n"
    b"Cc: Carol <carol@example.test>\r\nBcc: secret@example.test\r\n"
    b"Subject: =?iso-8859-1?q?Gr=FC=DFe?=\r\nDate: Sun, 10 Mar 2024 23:30:00 -0800\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: base64\r\n"
    b"\r\n" + base64.encodebytes("Schöne Grüße aus München".encode("latin-1")).replace(
        b"\n", b"\r\n"),
    # 3: multipart with QP text and a binary attachment that contains the word "needle"
    b"From: dave@example.test\r\nSubject: report\r\nX-Tracking: ABC-123\r\n"
    b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n"
    b"--zz\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"The quarterly numbers are in. Caf=C3=A9 budget=\r\n is fine.\r\n"
    b"--zz\r\nContent-Type: application/octet-stream\r\n\r\nneedle\r\n--zz--\r\n",
    # 4: no Date header, big
    b"From: eve@example.test\r\nSubject: big one\r\n\r\n" + b"filler line\r\n" * 2000,
]


async def setup(mail_store):
    folder, uids = await deliver(mail_store, *MESSAGES)
    await folder.set_flags([uids[0]], ["\\Seen", "\\Answered"], "add")
    await folder.set_flags([uids[1]], ["\\Flagged", "$Work"], "add")
    await folder.set_flags([uids[2]], ["\\Deleted", "\\Draft", "\\Seen"], "add")
    return folder, uids


async def run(folder, text, charset=None, infos=None):
    c = parser.parse_command([b"A SEARCH " + text.encode()])
    cs, key = parser.parse_search(c.args)
    infos = infos if infos is not None else folder.messages()
    seqs = {info.uid: n for n, info in enumerate(infos, 1)}
    return await search.search(folder, infos, seqs, key, charset or cs)


@pytest_twisted.ensureDeferred
async def test_index_keys_open_no_file(store):  # noqa: F811
    folder, u = await setup(store)
    cases = {
        "ALL": u,
        "SEEN": [u[0], u[2]],
        "UNSEEN": [u[1], u[3]],
        "ANSWERED": [u[0]],
        "UNANSWERED": u[1:],
        "FLAGGED": [u[1]],
        "UNFLAGGED": [u[0], u[2], u[3]],
        "DELETED": [u[2]],
        "UNDELETED": [u[0], u[1], u[3]],
        "DRAFT": [u[2]],
        "UNDRAFT": [u[0], u[1], u[3]],
        "KEYWORD $work": [u[1]],
        "UNKEYWORD $Work": [u[0], u[2], u[3]],
        "RECENT": u,
        "NEW": [u[1], u[3]],
        "OLD": [],
        "LARGER 1000": [u[3]],
        "SMALLER 300": [u[0]],
        "1,3": [u[0], u[2]],
        "2:*": u[1:],
        "*": [u[3]],
        f"UID {u[1]}:{u[2]}": [u[1], u[2]],
        "UID 4000:*": [u[3]],
        "NOT SEEN": [u[1], u[3]],
        "OR FLAGGED DRAFT": [u[1], u[2]],
        "(SEEN UNANSWERED)": [u[2]],
        "SEEN NOT DELETED": [u[0]],
        "ON 17-Jul-1996": u,
        "BEFORE 17-Jul-1996": [],
        "SINCE 18-Jul-1996": [],
        "SINCE 17-Jul-1996 BEFORE 18-Jul-1996": u,
    }
    for text, want in cases.items():
        assert await run(folder, text) == sorted(want), text
    assert folder.opens == 0


@pytest_twisted.ensureDeferred
async def test_regression_header_keys_no_type_error(store):  # noqa: F811
    """Twisted's SUBJECT/FROM/TO/HEADER search raised a bytes/str TypeError."""
    folder, u = await setup(store)
    cases = {
        "FROM alice": [u[0]],
        'FROM "smith"': [u[0]],
        "FROM müller": [u[1]],
        "SUBJECT grüße": [u[1]],
        "SUBJECT LUNCH": [u[0]],
        "TO bob@example": [u[0]],
        "CC carol": [u[1]],
        "BCC secret": [u[1]],
        "HEADER X-Tracking abc-1": [u[2]],
        'HEADER x-tracking ""': [u[2]],
        'HEADER Subject ""': u,
        "NOT FROM example.test": [],
        "OR FROM eve SUBJECT report": [u[2], u[3]],
    }
    for text, want in cases.items():
        assert await run(folder, text, charset="UTF-8") == sorted(want), text


@pytest_twisted.ensureDeferred
async def test_regression_text_includes_headers(store):  # noqa: F811
    """twisted#6423: TEXT ignored headers. BODY/TEXT search decoded text parts."""
    folder, u = await setup(store)
    cases = {
        "BODY noon": [u[0]],
        "BODY MÜNCHEN": [u[1]],  # base64, latin-1
        "BODY café": [u[2]],  # quoted-printable, utf-8
        'BODY "budget is fine"': [u[2]],  # QP soft line break joined
        "BODY needle": [],  # only in a non-text attachment
        "BODY lunch": [],  # only in a header
        "TEXT lunch": [u[0]],  # TEXT includes headers
        "TEXT FILLER": [u[3]],
        "TEXT grüße": [u[1]],
        "BODY shall TEXT friday": [u[0]],
        "BODY nothing-matches": [],
        "NOT BODY noon": u[1:],
    }
    for text, want in cases.items():
        assert await run(folder, text, charset="UTF-8") == sorted(want), text


@pytest_twisted.ensureDeferred
async def test_sent_dates(store):  # noqa: F811
    folder, u = await setup(store)
    assert await run(folder, "SENTON 8-Mar-2024") == [u[0]]
    # The Date's own day counts, whatever the time zone (RFC 3501).
    assert await run(folder, "SENTON 10-Mar-2024") == [u[1]]
    # No Date header counts as the epoch (as in Dovecot).
    assert await run(folder, "SENTBEFORE 10-Mar-2024") == [u[0], u[2], u[3]]
    assert await run(folder, "SENTSINCE 9-Mar-2024") == [u[1]]
    assert await run(folder, "NOT SENTSINCE 1-Jan-2000") == [u[2], u[3]]


@pytest_twisted.ensureDeferred
async def test_structure_cached_by_search_is_reused(store):  # noqa: F811
    folder, u = await setup(store)
    await run(folder, "BODY noon")
    opened = folder.opens
    assert opened == 4
    assert folder.get_cached(u[0], "mime") is not None
    # Index-only keys decide first; only undecided messages are opened.
    await run(folder, "SEEN BODY noon")
    assert folder.opens == opened + 2


@pytest_twisted.ensureDeferred
async def test_regression_charset_is_not_ignored(store):  # noqa: F811
    """twisted#9201: the SEARCH charset was ignored."""
    folder, u = await setup(store)
    with pytest.raises(search.BadCharset) as e:
        await run(folder, "CHARSET KOI8-R FROM x")
    assert e.value.supported == ("UTF-8", "US-ASCII")
    assert await run(folder, "CHARSET us-ascii SUBJECT report") == [u[2]]


@pytest_twisted.ensureDeferred
async def test_subset_and_expunged_message(store):  # noqa: F811
    folder, u = await setup(store)
    infos = folder.messages()
    await folder.expunge([u[2]])
    # A stale snapshot that still lists an expunged message: it simply does not match.
    assert await run(folder, "TEXT report", infos=infos) == []
    assert await run(folder, "*", infos=infos[:2]) == [u[1]]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60))
def test_search_parser_only_parse_error(data):
    try:
        parser.parse_search(parser.parse_command([b"A SEARCH " + data]).args)
    except parser.ParseError:
        pass


# ------------------------------------------------------- Dovecot as the oracle for SEARCH

ORACLE_QUERIES = [
    b"FROM alice", b'FROM "Alice Smith"', b"FROM example.test", b"TO bob", b"CC carol",
    b"BCC secret", b"SUBJECT lunch", b"SUBJECT {7}\r\nGr\xc3\xbc\xc3\x9fe", b"SUBJECT REPORT",
    b"HEADER X-Tracking abc", b'HEADER X-Tracking ""', b"HEADER Received x",
    b"BODY noon", b"BODY {8}\r\nM\xc3\xbcnchen", b'BODY "budget is fine"', b"BODY needle",
    b"BODY lunch", b"TEXT lunch", b"TEXT filler", b"TEXT {7}\r\ngr\xc3\xbc\xc3\x9fe",
    b"TEXT ABC-123", b"BODY {5}\r\ncaf\xc3\xa9", b"NOT BODY noon", b"OR FROM eve SUBJECT report",
    b"SENTON 8-Mar-2024", b"SENTON 10-Mar-2024", b"SENTBEFORE 10-Mar-2024",
    b"SENTSINCE 9-Mar-2024", b"NOT SENTSINCE 1-Jan-2000", b"LARGER 1000", b"SMALLER 300",
    b"SUBJECT inner", b"BODY AAECAw", b"TEXT quarterly", b"FROM bob@example.test",
]


def _dovecot_search(msgs, query):
    """Message indexes Dovecot's SEARCH matches for ``query`` (a fresh session each)."""
    import os
    import pwd
    import re
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from tests.imap.test_mime import _dovecot_session, _fetch_responses

    top = Path(tempfile.mkdtemp(prefix="mailhost-dovecot-"))
    try:
        commands = b"m FETCH 1:* (BODY.PEEK[])\r\n"
        if b"{" in query:  # Dovecot's own literals need no continuation here: LITERAL+
            query = re.sub(rb"\{(\d+)\}\r\n", rb"{\1+}\r\n", query)
        commands += b"s SEARCH CHARSET UTF-8 " + query + b"\r\n"
        out = _dovecot_session(top, msgs, commands, os, pwd, subprocess)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    assert b"s OK" in out, out[-300:]
    order = {n: msgs.index(data) for n, (data, _) in _fetch_responses(out, len(msgs), re).items()}
    m = re.search(rb"\r\n\* SEARCH([ \d]*)\r\n", out)
    return sorted(order[int(n)] for n in m.group(1).split())


@pytest_twisted.ensureDeferred
async def test_search_matches_dovecot():
    """SEARCH over header, body, text, date and size keys picks the same messages as
    Dovecot (without FTS plugins) does on the same mailbox."""
    from mailhost.imap.headerindex import HeaderTable
    from mailhost.store.memory import MemoryStore
    from tests.imap.test_mime import NESTED, RFC3501

    msgs = [*MESSAGES, NESTED, RFC3501]
    folder, uids = await deliver(MemoryStore(), *msgs)
    infos = folder.messages()
    seqs = {info.uid: n for n, info in enumerate(infos, 1)}
    table = HeaderTable()
    for query in ORACLE_QUERIES:
        segments = query.split(b"\r\n")
        wire = [b"A SEARCH CHARSET UTF-8 " + segments[0]]
        for seg in segments[1:]:
            marker = parser.literal_marker(wire[-1])
            wire += [seg[:marker[0]], seg[marker[0]:]]
        charset, key = parser.parse_search(parser.parse_command(wire).args)
        found = await search.search(folder, infos, seqs, key, charset)
        ours = sorted(uids.index(u) for u in found)
        assert ours == _dovecot_search(msgs, query), query
        # The same answers from the header table (SORT/THREAD's, headerindex), both
        # through search() and through the table-only matcher.
        assert await search.search(folder, infos, seqs, key, charset,
                                   fields=lambda u: table.get(folder, u)) == found, query
        matcher = search.fields_matcher(key)
        if matcher is not None:
            known = await table.get(folder, uids)
            assert [u for u in uids if matcher(known[u])] == found, query


def test_body_search_streams_in_bounded_memory():
    """A 12 MB base64 text body is searched without holding it (peak well under 2 MB)."""
    import io
    import tracemalloc

    text = ("Grüße aus München. " * 50 + "\n").encode("latin-1") * 12000
    body = base64.encodebytes(text).replace(b"\n", b"\r\n")
    msg = (b"Subject: big\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"needle-in-raw\r\n")
    needs = search._Needs(body={search._needle("münchen.".encode()), "ZZZ-ABSENT"},
                          text={search._needle(b"subject: big")})
    f = io.BytesIO(msg)
    tracemalloc.start()
    try:
        struct, found, fresh = search._examine(f, None, needs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert fresh and found.body == {search._needle("münchen.".encode())}
    assert found.text == {search._needle(b"subject: big")}
    assert peak < 2 * 1024 * 1024, peak
