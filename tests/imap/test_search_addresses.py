"""SEARCH FROM/TO/CC/BCC match addresses as ENVELOPE parses them, the way Dovecot does.

Issue 16: ``SEARCH FROM user-from@domain.org`` did not match
``From: <user-from (comment)@ (comment) domain.org>`` because the raw field was searched.
Each query below is also run against Dovecot on the same messages.
"""

from __future__ import annotations

import pytest_twisted

from mailhost.imap import parser, search
from tests.imap.test_fetch import deliver
from tests.imap.test_search import _dovecot_search

MESSAGES = [
    b"From: <user-from (comment)@ (comment) domain.org>\r\nTo: plain@example.test\r\n"
    b"Subject: one\r\n\r\nbody\r\n",
    b'From: "Some One" <some.one@example.test>\r\n'
    b"To: other@example.test (Other Person), =?utf-8?q?J=C3=B6rg?= <jorg@example.test>\r\n"
    b"Subject: two\r\n\r\nbody\r\n",
    b"From: Carol <carol@example.test>\r\nCc: team: dave@example.test, eve@example.test;\r\n"
    b"Bcc: <hidden@example.test>\r\nSubject: three\r\n\r\nbody\r\n",
    b"From: user-from@domain.org\r\nSubject: four\r\n\r\nbody\r\n",
]

QUERIES = [
    b"FROM user-from@domain.org", b"FROM USER-FROM@DOMAIN.ORG", b"FROM comment",
    b"FROM domain.org", b'FROM "Some One"', b"FROM some.one@example.test",
    b"TO other@example.test", b"TO jorg", b"TO {5}\r\nJ\xc3\xb6rg", b"CC dave@example.test",
    b"CC eve", b"BCC hidden@example.test", b"FROM carol", b"NOT FROM domain.org",
    b"HEADER FROM comment",
]


@pytest_twisted.ensureDeferred
async def test_address_keys_match_dovecot():
    from mailhost.store.memory import MemoryStore

    folder, uids = await deliver(MemoryStore(), *MESSAGES)
    infos = folder.messages()
    seqs = {info.uid: n for n, info in enumerate(infos, 1)}
    for query in QUERIES:
        segments = query.split(b"\r\n")
        wire = [b"A SEARCH CHARSET UTF-8 " + segments[0]]
        for seg in segments[1:]:
            marker = parser.literal_marker(wire[-1])
            wire += [seg[:marker[0]], seg[marker[0]:]]
        charset, key = parser.parse_search(parser.parse_command(wire).args)
        found = await search.search(folder, infos, seqs, key, charset)
        ours = sorted(uids.index(u) for u in found)
        assert ours == _dovecot_search(MESSAGES, query), query
    # The case from the issue, spelled out.
    _, key = parser.parse_search([parser.Atom("FROM"), b"user-from@domain.org"])
    assert await search.search(folder, infos, seqs, key, None) == [uids[0], uids[3]]
