"""FETCH rendering through the IFolder API, against the memory and Maildir stores."""

from __future__ import annotations

import pytest
import pytest_twisted

from mailhost.imap import fetch, parser
from mailhost.store.interfaces import DeliveryTarget
from mailhost.store.maildir import MaildirStore
from mailhost.store.memory import MemoryStore
from mailhost.store.reader import read_all
from tests.imap.test_mime import NESTED, RFC3501

USER = "alice@example.test"


@pytest.fixture(params=["memory", "maildir"])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryStore()
    return MaildirStore(str(tmp_path / "mail"), fsync=False)


class CountingFolder:
    """Wraps an IFolder and counts read_message calls (each opens the message)."""

    def __init__(self, folder):
        self._folder = folder
        self.opens = 0

    def read_message(self, uid, offset=0, length=None):
        self.opens += 1
        return self._folder.read_message(uid, offset, length)

    def __getattr__(self, name):
        return getattr(self._folder, name)


async def deliver(store, *messages, flags=()):
    uids = []
    for m in messages:
        w = store.new_message()
        w.write(m)
        uids += await w.commit([DeliveryTarget(USER, flags=frozenset(flags),
                                               internal_date=837570205.0)])
    account = await store.open_account(USER)
    folder = await account.open_folder("INBOX")
    return CountingFolder(folder), uids


def items(spec: str):
    c = parser.parse_command([b"A FETCH 1 " + spec.encode()])
    return parser.parse_fetch_items(c.args[1:])


async def render(folder, uid, spec):
    """The FETCH response contents with BodyRanges read and inlined as literals."""
    pieces = await fetch.fetch_message(folder, folder.get(uid), items(spec))
    out = b""
    for p in pieces:
        if isinstance(p, fetch.BodyRange):
            data = await read_all(await p.open())
            assert len(data) == p.length
            out += b"{%d}\r\n" % p.length + data
        else:
            out += p
    return out


@pytest_twisted.ensureDeferred
async def test_index_items_open_no_file(store):
    folder, [uid] = await deliver(store, RFC3501, flags={"\\Seen", "$Work"})
    out = await render(folder, uid, "(UID FLAGS INTERNALDATE RFC822.SIZE)")
    assert out == (b'UID %d FLAGS (\\Recent \\Seen $Work) INTERNALDATE "17-Jul-1996 02:23:25 +0000" '
                   b"RFC822.SIZE %d" % (uid, len(RFC3501)))
    assert folder.opens == 0


@pytest_twisted.ensureDeferred
async def test_structure_cached_second_fetch_opens_nothing(store):
    folder, [uid] = await deliver(store, NESTED)
    first = await render(folder, uid, "(ENVELOPE BODYSTRUCTURE BODY)")
    assert folder.opens == 1
    assert first.startswith(b'ENVELOPE (NIL NIL ((NIL NIL "a" "example.test"))')
    assert b' BODYSTRUCTURE (((' in first and b' BODY (((' in first
    second = await render(folder, uid, "(ENVELOPE BODYSTRUCTURE BODY)")
    assert second == first and folder.opens == 1


@pytest_twisted.ensureDeferred
async def test_rfc822_items_and_sections(store):
    folder, [uid] = await deliver(store, NESTED)
    msg = NESTED
    hdr_end = msg.index(b"\r\n\r\n") + 4
    out = await render(folder, uid, "RFC822.HEADER")
    assert out == b"RFC822.HEADER {%d}\r\n" % hdr_end + msg[:hdr_end]
    out = await render(folder, uid, "RFC822")
    assert out == b"RFC822 {%d}\r\n" % len(msg) + msg
    out = await render(folder, uid, "RFC822.TEXT")
    assert out == b"RFC822.TEXT {%d}\r\n" % (len(msg) - hdr_end) + msg[hdr_end:]
    out = await render(folder, uid, "BODY[1.1]")
    assert out == b"BODY[1.1] {9}\r\ncaf=C3=A9"
    out = await render(folder, uid, "BODY.PEEK[1.2.MIME]")
    assert out == b"BODY[1.2.MIME] {27}\r\nContent-Type: text/html\r\n\r\n"
    out = await render(folder, uid, "BODY[2.HEADER]")
    assert out.startswith(b"BODY[2.HEADER] {") and out.endswith(
        b"Subject: inner\r\nFrom: Bob <bob@example.test>\r\n"
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n")
    out = await render(folder, uid, "BODY[2.1]")
    assert out == b"BODY[2.1] {13}\r\ndefault typed"
    out = await render(folder, uid, "BODY[2.2]")
    assert out == b"BODY[2.2] {8}\r\nAAECAw=="
    out = await render(folder, uid, "BODY[2.TEXT]")
    # The close delimiter's CRLF stays in the embedded message (as Dovecot has it).
    assert out.startswith(b"BODY[2.TEXT] {") and out.endswith(b"AAECAw==\r\n--x--\r\n")
    out = await render(folder, uid, "BODY[2]")
    assert b"\r\nSubject: inner\r\n" in out and out.endswith(b"--x--\r\n")
    # Missing parts are empty; a leaf's part 1 is itself (both as Dovecot answers).
    out = await render(folder, uid, "(BODY[7] BODY[1.1.1] BODY[1.HEADER] BODY[1.3])")
    assert out == b'BODY[7] "" BODY[1.1.1] {9}\r\ncaf=C3=A9 BODY[1.HEADER] "" BODY[1.3] ""'


@pytest_twisted.ensureDeferred
async def test_part_one_of_single_part_message(store):
    folder, [uid] = await deliver(store, b"Subject: s\r\n\r\nhello\r\n")
    assert await render(folder, uid, "BODY[1]") == b"BODY[1] {7}\r\nhello\r\n"
    assert await render(folder, uid, "BODY[TEXT]") == b"BODY[TEXT] {7}\r\nhello\r\n"
    assert await render(folder, uid, "BODY[1.MIME]") == b"BODY[1.MIME] {14}\r\nSubject: s\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_regression_header_fields_keep_original_lines(store):
    """Twisted rebuilt HEADER fetches from a dict: names title-cased, duplicates lost,
    no blank line."""
    msg = (b"Received: one\r\nsubject: Hi\r\n  folded\r\nX-A: 1\r\nRECEIVED: two\r\n"
           b"From: a@b\r\n\r\nbody\r\n")
    folder, [uid] = await deliver(store, msg)
    out = await render(folder, uid, '(BODY.PEEK[HEADER.FIELDS (Received "SUBJECT")])')
    want = b"Received: one\r\nsubject: Hi\r\n  folded\r\nRECEIVED: two\r\n\r\n"
    assert out == b"BODY[HEADER.FIELDS (RECEIVED SUBJECT)] {%d}\r\n" % len(want) + want
    out = await render(folder, uid, "BODY.PEEK[HEADER.FIELDS.NOT (received subject)]")
    want = b"X-A: 1\r\nFrom: a@b\r\n\r\n"
    assert out == b"BODY[HEADER.FIELDS.NOT (RECEIVED SUBJECT)] {%d}\r\n" % len(want) + want
    out = await render(folder, uid, "BODY.PEEK[HEADER.FIELDS (Nope)]")
    assert out == b"BODY[HEADER.FIELDS (NOPE)] {2}\r\n\r\n"
    out = await render(folder, uid, "BODY.PEEK[HEADER.FIELDS (X-A)]<3.100>")
    assert out == b"BODY[HEADER.FIELDS (X-A)]<3> {7}\r\n: 1\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_regression_partial_returns_exact_octets(store):
    """twisted#5613: a partial BODY[]<0.10> returned the whole body."""
    msg = b"Subject: p\r\n\r\n0123456789"
    folder, [uid] = await deliver(store, msg)
    n = len(msg)
    assert await render(folder, uid, "BODY[]<0.1>") == b"BODY[]<0> {1}\r\nS"
    assert await render(folder, uid, "BODY[]<%d.5>" % (n - 2)) == b"BODY[]<%d> {2}\r\n89" % (
        n - 2)
    assert await render(folder, uid, "BODY[]<%d.5>" % n) == b'BODY[]<%d> ""' % n
    assert await render(folder, uid, "BODY[]<%d.5>" % (n + 10)) == b'BODY[]<%d> ""' % (n + 10)
    assert await render(folder, uid, "BODY[TEXT]<9.1>") == b"BODY[TEXT]<9> {1}\r\n9"
    assert await render(folder, uid, "BODY[TEXT]<10.1>") == b'BODY[TEXT]<10> ""'


@pytest_twisted.ensureDeferred
async def test_large_body_streams_as_body_range(store):
    big = b"Subject: big\r\nContent-Type: text/plain\r\n\r\n" + (b"x" * 998 + b"\r\n") * 3000
    folder, [uid] = await deliver(store, big)
    pieces = await fetch.fetch_message(folder, folder.get(uid),
                                       items("(UID BODY.PEEK[] BODY[TEXT]<100.200000> FLAGS)"))
    ranges = [p for p in pieces if isinstance(p, fetch.BodyRange)]
    assert [r.length for r in ranges] == [len(big), 200000]
    assert pieces[0] == b"UID %d BODY[] " % uid
    assert pieces[2] == b" BODY[TEXT]<100> " and pieces[4] == b" FLAGS (\\Recent)"
    hdr = big.index(b"\r\n\r\n") + 4
    assert ranges[1].offset == hdr + 100
    assert folder.opens == 1  # the structure scan for BODY[TEXT]; BODY[] is not read here
    pieces = await fetch.fetch_message(folder, folder.get(uid), items("BODY.PEEK[]"))
    assert isinstance(pieces[1], fetch.BodyRange) and folder.opens == 1
    out = await render(folder, uid, "BODY[TEXT]<100.200000>")
    assert out.endswith(big[hdr + 100:hdr + 100 + 200000])


def test_needs_seen():
    assert fetch.needs_seen(items("(BODY[])"))
    assert fetch.needs_seen(items("RFC822"))
    assert fetch.needs_seen(items("RFC822.TEXT"))
    assert not fetch.needs_seen(items("(BODY.PEEK[] RFC822.HEADER BODY BODYSTRUCTURE FLAGS)"))


# ------------------------------------------------- a real client parses our output


def _imaplib_shape(response: bytes) -> list:
    """Split a FETCH response the way imaplib hands it to imapclient: a tuple per literal."""
    import re

    out: list = []
    pos = 0
    prefix = b""
    for m in re.finditer(rb"\{(\d+)\}\r\n", response):
        if m.start() < pos:
            continue  # inside literal data already consumed
        n = int(m.group(1))
        out.append((prefix + response[pos:m.end() - 2], response[m.end():m.end() + n]))
        pos = m.end() + n
        prefix = b""
    out.append(response[pos:])
    return out


async def _parsed(folder, uid, spec):
    from imapclient.response_parser import parse_fetch_response

    body = await render(folder, uid, spec)
    [(key, got)] = parse_fetch_response(_imaplib_shape(b"1 (" + body + b")")).items()
    return got


@pytest_twisted.ensureDeferred
async def test_imapclient_parses_envelope_and_bodystructure(store):
    nasty = (b"Subject: caf\xc3\xa9 \"quoted\" \\ back\r\n"
             b"From: \"Doe, J\" <j@x.test>, Team: a@x.test, <b@x.test>;\r\n"
             b"To: undisclosed-recipients:;\r\nMessage-ID: <m1@x>\r\n\r\nhi\r\n")
    folder, [u1, u2] = await deliver(store, NESTED, nasty)
    got = await _parsed(folder, u1, "(ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[2.2] UID)")
    bs = got[b"BODYSTRUCTURE"]
    assert bs.is_multipart and bs[1] == b"MIXED"
    alt, fwd = bs[0]
    assert alt[0][0][:2] == (b"TEXT", b"PLAIN") and alt[1] == b"ALTERNATIVE"
    assert fwd[:2] == (b"MESSAGE", b"RFC822") and fwd[7][1] == b"inner"
    assert fwd[8][2] == b"MIXED" and fwd[8][1][3] == b"<id1@x>"
    assert got[b"BODY[2.2]"] == b"AAECAw=="
    assert got[b"ENVELOPE"].from_[0].mailbox == b"a"

    got = await _parsed(folder, u2, "(ENVELOPE BODY.PEEK[HEADER.FIELDS (To)] RFC822.SIZE)")
    env = got[b"ENVELOPE"]
    assert env.subject == "caf\u00e9 \"quoted\" \\ back".encode()
    assert [a.name for a in env.from_] == [b"Doe, J", None, None, None, None]
    assert [a.mailbox for a in env.from_] == [b"j", b"Team", b"a", b"b", None]
    assert env.to[0].mailbox == b"undisclosed-recipients" and env.to[0].host is None
    assert env.message_id == b"<m1@x>"
    assert got[b"BODY[HEADER.FIELDS (TO)]"] == b"To: undisclosed-recipients:;\r\n\r\n"
    assert got[b"RFC822.SIZE"] == len(nasty)


@pytest_twisted.ensureDeferred
async def test_every_partial_window_is_exact(store):
    msg = b"Subject: w\r\n\r\n" + bytes(range(32, 127)) + b"\r\n"
    folder, [uid] = await deliver(store, msg)
    for start in (0, 1, 13, 14, 50, len(msg) - 1, len(msg), len(msg) + 1):
        for length in (1, 2, 7, 200):
            got = await _parsed(folder, uid, "BODY.PEEK[]<%d.%d>" % (start, length))
            assert got[b"BODY[]<%d>" % start] == msg[start:start + length], (start, length)


# ------------------------------------------------- Dovecot as the oracle for sections

SECTIONS = (
    b"BODY.PEEK[1] BODY.PEEK[1.MIME] BODY.PEEK[1.HEADER] BODY.PEEK[1.TEXT] "
    b"BODY.PEEK[2] BODY.PEEK[2.HEADER] BODY.PEEK[2.TEXT] BODY.PEEK[2.1] BODY.PEEK[2.2.MIME] "
    b"BODY.PEEK[1.1.1] BODY.PEEK[9] BODY.PEEK[TEXT]<2.3> BODY.PEEK[]<9999.3> "
    b"BODY.PEEK[HEADER.FIELDS (subject From CONTENT-TYPE)] BODY.PEEK[HEADER.FIELDS.NOT (subject)] "
    b"BODY.PEEK[1.1.MIME] BODY.PEEK[HEADER]<5.20>"
)


@pytest_twisted.ensureDeferred
async def test_sections_match_dovecot():
    """Every body section Dovecot returns for the oracle corpus, we return the same."""
    from tests.imap.test_mime import _dovecot_fetch, _oracle_corpus, _unliteral

    msgs = _oracle_corpus()
    answers = _dovecot_fetch(msgs, SECTIONS)
    folder, uids = await deliver(MemoryStore(), *msgs)
    for msg, uid, answer in zip(msgs, uids, answers, strict=True):
        ours = _unliteral(await render(folder, uid, "(" + SECTIONS.decode() + ")"))
        assert ours == _unliteral(answer), (msg, ours, answer)
