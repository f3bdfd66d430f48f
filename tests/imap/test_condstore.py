"""CONDSTORE and QRESYNC (RFC 7162) over a real socket, against the RFC's examples
and edge cases; two sessions; the parser pieces under hypothesis."""

from __future__ import annotations

import re

import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

from mailhost.imap import condstore, parser
from tests.imap.test_server_harness import imap_host_fixture, make_message  # noqa: F401
from tests.imap.test_server_harness import raw as _raw


def raw(c, line: bytes) -> list[bytes]:
    """One command's response lines, \\Recent left out (the first SELECT claims every
    delivered message as recent; it is not what these tests are about)."""
    return [x.replace(b" \\Recent", b"").replace(b"\\Recent", b"") for x in _raw(c, line)]


def _modseq(line: bytes) -> int:
    m = re.search(rb"MODSEQ \((\d+)\)", line)
    assert m, line
    return int(m.group(1))


def _code(lines: list[bytes], code: bytes) -> int:
    for line in lines:
        m = re.search(rb"\[" + code + rb" (\d+)\]", line)
        if m:
            return int(m.group(1))
    raise AssertionError((code, lines))


async def _fill(host, n: int, folder: str = "INBOX") -> list[int]:
    return [await host.deliver(make_message(f"m{i}"), folder=folder) for i in range(n)]


@pytest_twisted.ensureDeferred
async def test_capabilities_and_enable(imap_host):
    host = await imap_host()

    def run():
        c = host.client()
        assert "CONDSTORE" in c.capabilities and "QRESYNC" in c.capabilities
        out = raw(c, b"E1 ENABLE CONDSTORE X-UNKNOWN")
        assert out == [b"* ENABLED CONDSTORE", b"E1 OK ENABLE completed"]
        # QRESYNC implies CONDSTORE; already-enabled ones are listed again.
        out = raw(c, b"E2 ENABLE QRESYNC CONDSTORE")
        assert out[0] == b"* ENABLED QRESYNC CONDSTORE" and out[-1].startswith(b"E2 OK")
        assert raw(c, b"E3 ENABLE")[-1].startswith(b"E3 BAD")

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_rfc7162_condstore_examples(imap_host):
    """SELECT (CONDSTORE), FETCH MODSEQ, FETCH CHANGEDSINCE, STORE UNCHANGEDSINCE with
    [MODIFIED], SEARCH MODSEQ and STATUS HIGHESTMODSEQ, as RFC 7162 3.1 shows them."""
    host = await imap_host()
    await _fill(host, 10)

    def run():
        c = host.client()
        out = raw(c, b"S1 SELECT INBOX (CONDSTORE)")
        highest = _code(out, b"HIGHESTMODSEQ")
        assert out[-1] == b"S1 OK [READ-WRITE] SELECT completed, CONDSTORE enabled"
        # Every message has a modseq no higher than HIGHESTMODSEQ.
        out = raw(c, b"F1 FETCH 1:* (FLAGS MODSEQ)")
        mods = [_modseq(line) for line in out[:-1]]
        assert len(mods) == 10 and max(mods) == highest and min(mods) >= 1
        # A flag change gets a new modseq above the old highest; STORE says it.
        out = raw(c, b"S2 STORE 2 +FLAGS (\\Flagged)")
        assert re.fullmatch(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)", out[0])
        m2 = _modseq(out[0])
        assert m2 > highest
        # CHANGEDSINCE returns only what changed since.
        out = raw(c, b"F2 FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % highest)
        assert out[:-1] == [b"* 2 FETCH (FLAGS (\\Flagged) MODSEQ (%d))" % m2]
        out = raw(c, b"F3 UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % m2)
        assert out == [b"F3 OK FETCH completed"]
        # RFC 7162 3.1.3 example: 7 and 9 changed since, 5 not; .SILENT still
        # reports the MODSEQ of what it changed, and [MODIFIED] names the others.
        raw(c, b"S3 STORE 7,9 +FLAGS.SILENT ($Work)")
        out = raw(c, b"S4 STORE 7,5,9 (UNCHANGEDSINCE %d) +FLAGS.SILENT (\\Deleted)" % m2)
        assert len(out) == 2 and out[0].startswith(b"* 5 FETCH (UID 5 MODSEQ (")
        m5 = _modseq(out[0])
        assert m5 > m2
        assert out[1] == b"S4 OK [MODIFIED 7,9] Conditional STORE failed"
        # UNCHANGEDSINCE 0 always fails; UID STORE names UIDs.
        out = raw(c, b"S5 UID STORE 3 (UNCHANGEDSINCE 0) +FLAGS (\\Seen)")
        assert out == [b"S5 OK [MODIFIED 3] Conditional STORE failed"]
        # SEARCH MODSEQ: matching messages, with the highest modseq among them.
        out = raw(c, b"R1 SEARCH MODSEQ %d" % (m2 + 1))
        assert out[0] == b"* SEARCH 5 7 9 (MODSEQ %d)" % m5
        out = raw(c, b'R2 UID SEARCH MODSEQ "/flags/\\\\draft" all %d' % m5)
        assert out[0] == b"* SEARCH 5 (MODSEQ %d)" % m5
        out = raw(c, b"R3 SEARCH MODSEQ %d" % (m5 + 1))
        assert out[0] == b"* SEARCH"
        # STATUS HIGHESTMODSEQ.
        out = raw(c, b"T1 STATUS INBOX (MESSAGES HIGHESTMODSEQ)")
        assert out[0] == b'* STATUS INBOX (MESSAGES 10 HIGHESTMODSEQ %d)' % m5
        # Expunge bumps HIGHESTMODSEQ too.
        raw(c, b"X1 EXPUNGE")
        out = raw(c, b"T2 STATUS INBOX (HIGHESTMODSEQ)")
        assert int(re.search(rb"HIGHESTMODSEQ (\d+)", out[0]).group(1)) > m5
        # Bad modifiers.
        assert raw(c, b"B1 FETCH 1 (FLAGS) (CHANGEDSINCE 0)")[-1].startswith(b"B1 BAD")
        assert raw(c, b"B2 FETCH 1 (FLAGS) (CHANGEDSINCE x)")[-1].startswith(b"B2 BAD")
        assert raw(c, b"B3 FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)")[-1].startswith(b"B3 BAD")
        assert raw(c, b"B4 STORE 1 (FOO 1) +FLAGS (x)")[-1].startswith(b"B4 BAD")
        assert raw(c, b"B5 FETCH 1 ()")[-1].startswith(b"B5 BAD")  # as without CONDSTORE

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_fetch_modseq_enables_condstore(imap_host):
    """A CONDSTORE-enabling command (FETCH MODSEQ) turns on MODSEQ in later updates."""
    host = await imap_host()
    await _fill(host, 3)

    def run():
        c = host.client()
        out = raw(c, b"S1 SELECT INBOX")
        assert not any(b"HIGHESTMODSEQ" in line for line in out)
        out = raw(c, b"F1 FETCH 1 (MODSEQ)")
        assert out[0].startswith(b"* OK [HIGHESTMODSEQ ")  # enabled while selected
        assert re.fullmatch(rb"\* 1 FETCH \(MODSEQ \(\d+\)\)", out[1])
        out = raw(c, b"S2 STORE 1 +FLAGS (\\Seen)")
        assert b"MODSEQ" in out[0]

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_qresync_select_vanished_and_changes(imap_host):
    """RFC 7162 3.2.5: SELECT (QRESYNC ...) reports VANISHED (EARLIER) and the FETCHes
    of what changed since the client's modseq; known-uids limits VANISHED."""
    host = await imap_host()
    await _fill(host, 20)

    def run():
        c = host.client()
        raw(c, b"E1 ENABLE QRESYNC")
        out = raw(c, b"S1 SELECT INBOX")
        validity, highest = _code(out, b"UIDVALIDITY"), _code(out, b"HIGHESTMODSEQ")
        raw(c, b"S2 STORE 3,4 +FLAGS (\\Flagged)")
        raw(c, b"S3 STORE 5,6,15 +FLAGS (\\Deleted)")
        out = raw(c, b"X1 EXPUNGE")
        assert out[0] == b"* VANISHED 5:6,15" and out[-1].startswith(b"X1 OK")
        raw(c, b"C1 CLOSE")
        out = raw(c, b"S4 SELECT INBOX (QRESYNC (%d %d))" % (validity, highest))
        assert b"* OK [CLOSED]" not in out  # CLOSE left nothing selected
        assert b"* VANISHED (EARLIER) 5:6,15" in out
        fetches = [line for line in out if b"FETCH" in line]
        assert [re.match(rb"\* (\d+) FETCH \(UID (\d+)", f).groups() for f in fetches] \
            == [(b"3", b"3"), (b"4", b"4")]
        assert all(b"FLAGS (\\Flagged)" in f and _modseq(f) > highest for f in fetches)
        new_high = _code(out, b"HIGHESTMODSEQ")
        # Reselecting closes the old mailbox with [CLOSED]; known-uids 1:10 limits
        # VANISHED to 5:6; with the current modseq nothing is reported.
        out = raw(c, b"S5 SELECT INBOX (QRESYNC (%d %d 1:10))" % (validity, highest))
        assert out[0] == b"* OK [CLOSED] Previous mailbox closed"
        assert b"* VANISHED (EARLIER) 5:6" in out
        out = raw(c, b"S6 EXAMINE INBOX (QRESYNC (%d %d 1:20 (1:3 1:3)))" % (validity, new_high))
        assert not any(b"VANISHED" in line or b"FETCH" in line for line in out)
        assert out[-1].startswith(b"S6 OK [READ-ONLY]")
        # A modseq above ours (another server's, on the same Maildir and UIDVALIDITY):
        # everything is reported, never nothing.
        out = raw(c, b"S8 SELECT INBOX (QRESYNC (%d %d 1:30))" % (validity, new_high + 10**6))
        assert b"* VANISHED (EARLIER) 5:6,15" in out  # none at or above UIDNEXT
        assert sum(1 for line in out if b" FETCH " in line) == 17
        # A different UIDVALIDITY: a plain SELECT, no resync data.
        out = raw(c, b"S7 SELECT INBOX (QRESYNC (%d %d))" % (validity + 1, highest))
        assert not any(b"VANISHED" in line or b"FETCH" in line for line in out)
        # UID FETCH (CHANGEDSINCE n VANISHED).
        out = raw(c, b"F1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % highest)
        assert out[0] == b"* VANISHED (EARLIER) 5:6,15"
        assert [int(re.search(rb"UID (\d+)", line).group(1)) for line in out[1:-1]] == [3, 4]
        out = raw(c, b"F2 UID FETCH 1:10 (FLAGS) (CHANGEDSINCE %d VANISHED)" % highest)
        assert out[0] == b"* VANISHED (EARLIER) 5:6"
        out = raw(c, b"F3 UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % (new_high + 99))
        assert out[0] == b"* VANISHED (EARLIER) 5:6,15" and len(out) == 1 + 17 + 1
        # Bad parameters.
        assert raw(c, b"B1 SELECT INBOX (QRESYNC (0 1))")[-1].startswith(b"B1 BAD")
        assert raw(c, b"B2 SELECT INBOX (QRESYNC (1))")[-1].startswith(b"B2 BAD")
        assert raw(c, b"B3 SELECT INBOX (FOO)")[-1].startswith(b"B3 BAD")
        assert raw(c, b"B4 SELECT INBOX (QRESYNC (1 2 (1:2 1)))")[-1].startswith(b"B4 BAD")

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_qresync_needs_enable(imap_host):
    host = await imap_host()

    def run():
        c = host.client()
        assert raw(c, b"S1 SELECT INBOX (QRESYNC (1 1))")[-1].startswith(b"S1 BAD")
        raw(c, b"S2 SELECT INBOX")
        assert raw(c, b"F1 UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)")[-1] \
            .startswith(b"F1 BAD")

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_qresync_past_the_remembered_expunges(imap_host):
    """Past the folder's memory of expunges (bounded, as Dovecot's), VANISHED
    (EARLIER) lists every UID of known-uids that is gone, which the RFC allows."""
    host = await imap_host()
    await _fill(host, 8)
    folder = await host.folder()
    folder._modseqs.keep = 2  # remember only the last two expunges

    def run():
        c = host.client()
        raw(c, b"E1 ENABLE QRESYNC")
        out = raw(c, b"S1 SELECT INBOX")
        validity, highest = _code(out, b"UIDVALIDITY"), _code(out, b"HIGHESTMODSEQ")
        for uid in (2, 4, 6):
            raw(c, b"S UID STORE %d +FLAGS (\\Deleted)" % uid)
            raw(c, b"X UID EXPUNGE %d" % uid)
        out = raw(c, b"S2 SELECT INBOX (QRESYNC (%d %d))" % (validity, highest))
        assert b"* VANISHED (EARLIER) 2,4,6" in out
        # Since the second expunge, the folder still knows exactly.
        mid = folder.highest_modseq - 1
        out = raw(c, b"S3 SELECT INBOX (QRESYNC (%d %d))" % (validity, mid))
        assert b"* VANISHED (EARLIER) 6" in out

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_two_sessions_next_command_and_idle(imap_host):
    """Changes one session makes reach the other's FETCH (MODSEQ) and VANISHED on its
    next command, and at once during IDLE."""
    host = await imap_host()
    await _fill(host, 6)

    def run():
        a, b = host.client(), host.client()
        raw(a, b"E1 ENABLE QRESYNC")
        raw(a, b"S1 SELECT INBOX")
        raw(b, b"S1 SELECT INBOX")
        raw(b, b"S2 STORE 2 +FLAGS (\\Answered)")
        out = raw(a, b"N1 NOOP")
        assert re.fullmatch(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Answered\) MODSEQ \(\d+\)\)", out[0])
        raw(b, b"S3 STORE 3 +FLAGS (\\Deleted)")
        raw(b, b"X1 EXPUNGE")
        out = raw(a, b"N2 NOOP")
        assert out[0] == b"* VANISHED 3"  # no FETCH for a message already gone
        assert out[1].startswith(b"N2 OK")
        # During IDLE: both arrive without a command.
        a.send(b"I1 IDLE\r\n")
        assert a.readline().startswith(b"+ ")
        raw(b, b"S4 STORE 1 +FLAGS (\\Seen)")
        line = a.readline()
        assert re.fullmatch(rb"\* 1 FETCH \(UID 1 FLAGS \((\\Recent )?\\Seen\) MODSEQ \(\d+\)\)\r\n",
                            line)
        raw(b, b"S5 UID STORE 6 +FLAGS (\\Deleted)")
        raw(b, b"X2 UID EXPUNGE 6")
        lines = [a.readline() for _ in range(2)]
        assert lines[1] == b"* VANISHED 6\r\n", lines
        a.send(b"DONE\r\n")
        assert a.readline().startswith(b"I1 OK")

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_condstore_only_session_gets_expunge_with_modseq(imap_host):
    """CONDSTORE without QRESYNC: EXPUNGE as before, flag updates with MODSEQ."""
    host = await imap_host(kind="memory")
    await _fill(host, 3)

    def run():
        a, b = host.client(), host.client()
        raw(a, b"S1 SELECT INBOX (CONDSTORE)")
        raw(b, b"S1 SELECT INBOX")
        raw(b, b"S2 STORE 1 +FLAGS (\\Deleted)")
        out = raw(a, b"N1 NOOP")
        assert re.fullmatch(rb"\* 1 FETCH \(UID 1 FLAGS \(\\Deleted\) MODSEQ \(\d+\)\)", out[0])
        raw(b, b"X EXPUNGE")
        out = raw(a, b"N2 NOOP")
        assert out[0] == b"* 1 EXPUNGE"

    await host.in_thread(run)


# -- the parser pieces, round-tripped -------------------------------------------------------

_mod = st.integers(min_value=1, max_value=2**63 - 1)
_uid = st.integers(min_value=1, max_value=2**32 - 1)
_ranges = st.lists(st.tuples(_uid, _uid), min_size=1, max_size=5)


def _render(ranges) -> str:
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in ranges)


def _tokens(text: str) -> list:
    return parser.tokenize([text.encode("ascii")])


@given(_uid, _mod, st.none() | _ranges, st.none() | _ranges)
def test_qresync_params_round_trip(validity, modseq, known, match):
    text = f"({validity} {modseq}"
    if known is not None:
        text += " " + _render(known)
    if match is not None:
        text += f" ({_render(match)} {_render(match)})"
    text += ")"
    [token] = _tokens(text)
    q = condstore.QresyncParams(token)
    assert (q.uid_validity, q.modseq) == (validity, modseq)
    if known is None:
        assert q.known is None
    else:
        assert q.known is not None
        assert [(min(a, b), max(a, b)) for a, b in q.known.ranges] == \
            [(min(a, b), max(a, b)) for a, b in known]


@given(_mod, st.booleans())
def test_fetch_modifiers_round_trip(modseq, vanished):
    text = f"(CHANGEDSINCE {modseq}{' VANISHED' if vanished else ''})"
    [token] = _tokens(text)
    mods = condstore._modifiers(token, ("CHANGEDSINCE", "VANISHED"))
    assert mods == {"CHANGEDSINCE": modseq, **({"VANISHED": True} if vanished else {})}


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_store_modifier_round_trip(modseq):
    [token] = _tokens(f"(UNCHANGEDSINCE {modseq})")
    assert condstore._modifiers(token, ("UNCHANGEDSINCE",)) == {"UNCHANGEDSINCE": modseq}


@given(st.integers(min_value=0, max_value=2**63 - 1), st.booleans())
def test_search_modseq_round_trip(modseq, entry):
    text = f'MODSEQ "/flags/\\\\seen" all {modseq}' if entry else f"MODSEQ {modseq}"
    _, key = parser.parse_search(_tokens(text))
    assert key == parser.SearchKey("MODSEQ", (modseq,))


@given(_ranges, st.lists(_uid, max_size=30))
def test_vanished_past_horizon_is_the_complement(ranges, present):
    """The ranges VANISHED (EARLIER) reports past the folder's memory are exactly the
    known UIDs not present (checked by brute force on small numbers)."""
    small = [(a % 200 + 1, b % 200 + 1) for a, b in ranges]
    present = sorted({p % 200 + 1 for p in present})

    class Forgetful:
        highest_modseq = 10
        uid_next = 151

        def expunged_since(self, modseq):
            return None

    within = condstore._ranges(parser.parse_sequence_set(parser.Atom(_render(small))), 200)
    got = condstore.vanished_since(Forgetful(), 1, within, present)
    want = sorted({u for a, b in small for u in range(min(a, b), min(max(a, b), 150) + 1)}
                  - set(present))
    parsed = parser.parse_sequence_set(parser.Atom(got.decode())) if got else None
    have = sorted({u for lo, hi in parsed.ranges for u in range(lo, hi + 1)}) if parsed else []
    assert have == want


# -- a real client ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_imapclient_condstore_and_qresync(imap_host):
    """imapclient's own CONDSTORE/QRESYNC calls: enable, select (HIGHESTMODSEQ), fetch
    MODSEQ and CHANGEDSINCE, search MODSEQ, STATUS HIGHESTMODSEQ, and an IDLE that
    hears another session's flag change and expunge."""
    from imapclient import IMAPClient

    host = await imap_host()
    await _fill(host, 5)

    def run():
        c = IMAPClient("127.0.0.1", port=host.port, ssl=False, timeout=10)
        c.login("alice@example.test", "secret")
        assert c.has_capability("CONDSTORE") and c.has_capability("QRESYNC")
        assert set(c.enable("CONDSTORE", "QRESYNC")) == {b"CONDSTORE", b"QRESYNC"}
        info = c.select_folder("INBOX")
        highest = info[b"HIGHESTMODSEQ"]
        got = c.fetch([1, 2, 3, 4, 5], ["FLAGS", "MODSEQ"])
        assert sorted(got) == [1, 2, 3, 4, 5]
        assert all(0 < d[b"MODSEQ"][0] <= highest for d in got.values())
        c.add_flags([2, 4], [b"\\Flagged"])
        changed = c.fetch([1, 2, 3, 4, 5], ["FLAGS"], modifiers=[f"CHANGEDSINCE {highest}"])
        assert sorted(changed) == [2, 4]
        assert all(d[b"MODSEQ"][0] > highest for d in changed.values())
        found = c.search(["MODSEQ", str(highest + 1)])
        assert sorted(found) == [2, 4] and found.modseq == changed[2][b"MODSEQ"][0]
        status = c.folder_status("INBOX", ["HIGHESTMODSEQ"])
        assert status[b"HIGHESTMODSEQ"] == changed[2][b"MODSEQ"][0]

        other = IMAPClient("127.0.0.1", port=host.port, ssl=False, timeout=10)
        other.login("alice@example.test", "secret")
        other.select_folder("INBOX")
        c.idle()
        other.add_flags([1], [b"$Label1"])
        other.delete_messages([5])
        other.expunge()
        seen = []
        for _ in range(20):
            seen += c.idle_check(timeout=0.5)
            if any(r and r[0] == b"VANISHED" or b"VANISHED" in r for r in seen):
                break
        c.idle_done()
        text = repr(seen)
        assert "MODSEQ" in text and "$Label1" in text and "VANISHED" in text, seen
        other.logout()
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_changedsince_with_body_items_and_move_under_qresync(imap_host):
    """CHANGEDSINCE also filters FETCHes that open the message (MODSEQ after the
    body); MOVE and UID EXPUNGE answer with VANISHED once QRESYNC is on."""
    host = await imap_host()
    await _fill(host, 4)

    def run():
        c = host.client()
        raw(c, b"E ENABLE QRESYNC")
        out = raw(c, b"S SELECT INBOX")
        highest = _code(out, b"HIGHESTMODSEQ")
        raw(c, b"S1 STORE 3 +FLAGS ($Later)")
        out = raw(c, b"F1 UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)]) (CHANGEDSINCE %d)"
                  % highest)
        assert len(out) == 5 and out[0].startswith(b"* 3 FETCH (UID 3 BODY[HEADER.FIELDS")
        assert b"Subject: m2" in out[1] and re.fullmatch(rb" MODSEQ \(\d+\)\)", out[3]), out
        out = raw(c, b"M1 UID MOVE 2 Trash")
        assert out[0].startswith(b"* OK [COPYUID ") and out[1] == b"* VANISHED 2", out
        raw(c, b"S2 UID STORE 4 +FLAGS (\\Deleted)")
        out = raw(c, b"X1 UID EXPUNGE 4")
        assert out[0] == b"* VANISHED 4"

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_esearch_with_modseq(imap_host):
    """RFC 7162 3.1.5 with ESEARCH (RFC 4731): MODSEQ as return data."""
    host = await imap_host()
    await _fill(host, 4)

    def run():
        c = host.client()
        out = raw(c, b"S SELECT INBOX (CONDSTORE)")
        highest = _code(out, b"HIGHESTMODSEQ")
        out = raw(c, b"S1 STORE 2,4 +FLAGS (\\Seen)")
        m = _modseq(out[0])
        out = raw(c, b"R1 UID SEARCH RETURN (ALL COUNT) MODSEQ %d" % (highest + 1))
        assert out[0] == b'* ESEARCH (TAG "R1") UID ALL 2,4 COUNT 2 MODSEQ %d' % m \
            or out[0] == b'* ESEARCH (TAG "R1") UID COUNT 2 ALL 2,4 MODSEQ %d' % m, out
        out = raw(c, b"R2 SEARCH RETURN (COUNT) MODSEQ %d" % (m + 1))
        assert out[0] == b'* ESEARCH (TAG "R2") COUNT 0', out

    await host.in_thread(run)
