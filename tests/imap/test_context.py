"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267): ``RETURN (UPDATE)`` results kept current
as the mailbox changes (a second session, a delivery, SMTP through a real twistd),
``CANCELUPDATE``, ``PARTIAL``, ``NOUPDATE``; the update ordering rules of 4.3 and the
RETURN parser, round-tripped with hypothesis."""

from __future__ import annotations

import imaplib
import re
import smtplib
import time

import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

from mailhost.imap import context, esearch, parser
from tests.imap.test_server_harness import imap_host_fixture, raw  # noqa: F401
from tests.imap.test_server_sort_thread import msg


def _read_until(c: imaplib.IMAP4, pattern: bytes, limit: int = 20) -> list[bytes]:
    """Lines (unsolicited ones) up to the first matching ``pattern``; bounded."""
    out = []
    for _ in range(limit):
        line = c.readline()
        if not line:
            break
        out.append(line.rstrip(b"\r\n"))
        if re.search(pattern, line):
            return out
    raise AssertionError(f"no {pattern!r} in {out!r}")


def _esearch(lines: list[bytes], tag: bytes) -> list[bytes]:
    return [x for x in lines if x.startswith(b'* ESEARCH (TAG "' + tag + b'")')]


@pytest_twisted.ensureDeferred
async def test_search_update_from_another_session_and_a_delivery(imap_host):
    host = await imap_host()
    for i in range(5):
        await host.deliver(msg(f"m{i}"), flags=("\\Flagged",) if i in (1, 3) else ())

    def run():
        a, b = host.client(), host.client()
        raw(a, b"S1 SELECT INBOX")
        raw(b, b"S1 SELECT INBOX")
        out = raw(a, b"A1 UID SEARCH RETURN (COUNT UPDATE) FLAGGED")
        assert out[0] == b'* ESEARCH (TAG "A1") UID COUNT 2', out
        assert out[-1].startswith(b"A1 OK"), out
        # Another session flags message 3: the next command of this one hears it.
        raw(b, b"B1 STORE 3 +FLAGS (\\Flagged)")
        out = raw(a, b"N1 NOOP")
        assert _esearch(out, b"A1") == [b'* ESEARCH (TAG "A1") UID ADDTO (0 3) COUNT 3'], out
        # This session's own STORE counts too.
        out = raw(a, b"A2 STORE 2 -FLAGS (\\Flagged)")
        assert _esearch(out, b"A1") == [b'* ESEARCH (TAG "A1") UID REMOVEFROM (0 2) COUNT 2'], out
        # Nothing changed: no ESEARCH.
        assert not _esearch(raw(a, b"N2 NOOP"), b"A1")
        # A sequence-number context alongside.
        out = raw(a, b"A3 SEARCH RETURN (UPDATE) UNSEEN")
        assert out[0] == b'* ESEARCH (TAG "A3") ALL 1:5', out
        raw(b, b"B2 STORE 4 +FLAGS (\\Seen)")
        out = raw(a, b"N3 NOOP")
        assert _esearch(out, b"A3") == [b'* ESEARCH (TAG "A3") REMOVEFROM (0 4)'], out
        a.send(b"I1 IDLE\r\n")
        assert a.readline().startswith(b"+ ")
        return a, b

    a, b = await host.in_thread(run)
    uid = await host.deliver(msg("m5"), flags=("\\Flagged",))

    def idle():
        lines = _read_until(a, rb'TAG "A3"')
        lines += _read_until(a, rb'TAG "A1"') if not _esearch(lines, b"A1") else []
        assert b"* 6 EXISTS" in lines, lines
        assert b'* ESEARCH (TAG "A1") UID ADDTO (0 %d) COUNT 3' % uid in lines, lines
        assert b'* ESEARCH (TAG "A3") ADDTO (0 6)' in lines, lines
        a.send(b"DONE\r\n")
        assert a.readline().startswith(b"I1 OK")
        # Expunged by another session: EXPUNGE, and the UID context hears REMOVEFROM
        # (RFC 5267 4.3: updates come for expunges too; 4.3.4's example).
        raw(b, b"B3 STORE 3 +FLAGS (\\Deleted)")
        raw(b, b"B4 EXPUNGE")
        out = raw(a, b"N4 NOOP")
        assert b"* 3 EXPUNGE" in out, out
        assert _esearch(out, b"A1") == [b'* ESEARCH (TAG "A1") UID REMOVEFROM (0 3) COUNT 2'], out
        # CANCELUPDATE: no more updates for that tag; an unknown tag is BAD.
        assert raw(a, b'C1 CANCELUPDATE "A1"')[-1].startswith(b"C1 OK")
        raw(b, b"B5 STORE 1 +FLAGS (\\Flagged)")
        out = raw(a, b"N5 NOOP")
        assert not _esearch(out, b"A1"), out
        assert raw(a, b'C2 CANCELUPDATE "A1"')[-1].startswith(b"C2 BAD")
        # A new SELECT ends every context.
        raw(a, b"S2 SELECT INBOX")
        assert raw(a, b'C3 CANCELUPDATE "A3"')[-1].startswith(b"C3 BAD")

    await host.in_thread(idle)


@pytest_twisted.ensureDeferred
async def test_sort_update_positions_rebuild_the_new_sort(imap_host):
    """RFC 5267 4.3: applying REMOVEFROM/ADDTO left to right gives the new order."""
    host = await imap_host()
    for s in ("b", "d", "f", "h"):
        await host.deliver(msg(s))

    def start():
        a, b = host.client(), host.client()
        raw(a, b"S1 SELECT INBOX")
        raw(b, b"S1 SELECT INBOX")
        out = raw(a, b"T1 UID SORT RETURN (ALL UPDATE) (SUBJECT) UTF-8 UNSEEN")
        assert out[0] == b'* ESEARCH (TAG "T1") UID ALL 1:4', out
        return a, b

    a, b = await host.in_thread(start)
    for s in ("a", "e", "c", "i"):
        await host.deliver(msg(s))

    def later():
        view = [1, 2, 3, 4]
        raw(b, b"B1 UID STORE 2,4 +FLAGS (\\Seen)")  # d and h leave the result
        out = raw(a, b"N1 NOOP")
        (line,) = _esearch(out, b"T1")
        for kind, pos, run in re.findall(rb"(ADDTO|REMOVEFROM) \((\d+) ([\d,:]+)\)", line):
            nums = [int(n) for n in run.split(b",")] if b":" not in run else \
                list(range(int(run.split(b":")[0]), int(run.split(b":")[1]) + 1))
            view = context.apply_steps(view, [(kind.decode(), int(pos), nums)])
        fresh = raw(a, b"T2 UID SORT (SUBJECT) UTF-8 UNSEEN")[0]
        assert view == [int(n) for n in fresh.split()[2:]], (line, fresh)
        assert line.index(b"REMOVEFROM") < line.index(b"ADDTO"), line

    await host.in_thread(later)


@pytest_twisted.ensureDeferred
async def test_partial_and_noupdate(imap_host):
    host = await imap_host()
    for i in range(6):
        await host.deliver(msg(f"p{i}"))

    def run():
        c = host.client()
        raw(c, b"S1 SELECT INBOX")
        out = raw(c, b"P1 SEARCH RETURN (PARTIAL 2:4) ALL")
        assert out[0] == b'* ESEARCH (TAG "P1") PARTIAL (2:4 2:4)', out
        out = raw(c, b"P2 UID SEARCH RETURN (PARTIAL 7:9 COUNT) ALL")
        assert out[0] == b'* ESEARCH (TAG "P2") UID PARTIAL (7:9 NIL) COUNT 6', out
        out = raw(c, b"P3 SORT RETURN (PARTIAL 1:2) (REVERSE SUBJECT) UTF-8 ALL")
        assert out[0] == b'* ESEARCH (TAG "P3") PARTIAL (1:2 6,5)', out
        out = raw(c, b"P3a SEARCH RETURN (CONTEXT PARTIAL 5:6) ALL")  # CONTEXT: a hint
        assert out[0] == b'* ESEARCH (TAG "P3a") PARTIAL (5:6 5:6)', out
        out = raw(c, b"P3b SEARCH RETURN (CONTEXT) ALL")
        assert out[0] == b'* ESEARCH (TAG "P3b") ALL 1:6', out
        assert raw(c, b"P4 SEARCH RETURN (PARTIAL 1:2 ALL) ALL")[-1].startswith(b"P4 BAD")
        assert raw(c, b"P5 SEARCH RETURN (PARTIAL 0:2) ALL")[-1].startswith(b"P5 BAD")
        for i in range(context.MAX_CONTEXTS):
            raw(c, b"U%d SEARCH RETURN (COUNT UPDATE) ALL" % i)
        out = raw(c, b"U99 SEARCH RETURN (COUNT UPDATE) ALL")
        assert out[0] == b'* NO [NOUPDATE "U99"] Too many updating searches', out
        assert out[1] == b'* ESEARCH (TAG "U99") COUNT 6', out
        # The same tag twice is refused.
        assert raw(c, b"U0 SEARCH RETURN (UPDATE) ALL")[-1].startswith(b"U0 BAD")

    await host.in_thread(run)


def test_search_update_from_smtp_delivery(mailhost_proc):
    """The whole host: a message sent over SMTP reaches an updating search in IDLE."""
    c = imaplib.IMAP4("127.0.0.1", mailhost_proc.ports["imap"], timeout=15)
    c.login("alice@example.test", "alice-pw")
    raw(c, b"S1 SELECT INBOX")
    out = raw(c, b"A1 UID SEARCH RETURN (UPDATE) SUBJECT invoice")
    assert out[0] == b'* ESEARCH (TAG "A1") UID', out
    c.send(b"I1 IDLE\r\n")
    assert c.readline().startswith(b"+ ")
    with smtplib.SMTP("127.0.0.1", mailhost_proc.ports["smtp"], timeout=15) as s:
        s.sendmail("bob@example.test", ["alice@example.test"],
                   b"From: bob@example.test\r\nTo: alice@example.test\r\n"
                   b"Subject: your invoice\r\n\r\nPay.\r\n")
    deadline = time.monotonic() + 15
    lines = _read_until(c, rb'TAG "A1"')
    assert time.monotonic() < deadline
    assert lines[-1] == b'* ESEARCH (TAG "A1") UID ADDTO (0 1)', lines
    c.send(b"DONE\r\n")
    assert c.readline().startswith(b"I1 OK")
    c.logout()


# -- units -------------------------------------------------------------------------------


@given(st.lists(st.integers(1, 60), unique=True, max_size=30), st.data())
def test_diff_sorted_rebuilds_any_new_result(universe, data):
    """Any old and new result that agree on the order of what they share."""
    old = [u for u in universe if data.draw(st.booleans())]
    kept = [u for u in old if data.draw(st.booleans())]
    new = list(kept)
    for u in universe:
        if u not in old and data.draw(st.booleans()):
            new.insert(data.draw(st.integers(0, len(new))), u)
    steps = context.diff_sorted(old, new)
    assert context.apply_steps(old, steps) == new
    kinds = [k for k, _, _ in steps]
    assert kinds == sorted(kinds, key=lambda k: k != "REMOVEFROM")  # removals first


_OPTION = st.sampled_from(["MIN", "MAX", "COUNT", "SAVE", "UPDATE", "ALL"])


@given(st.lists(_OPTION, unique=True, max_size=5),
       st.one_of(st.none(), st.tuples(st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1))))
def test_return_options_round_trip(options, partial):
    if partial is not None and "ALL" in options:
        options.remove("ALL")
    words = list(options)
    if partial is not None:
        words += ["PARTIAL", "%d:%d" % partial]
    line = b"t SEARCH RETURN (" + " ".join(words).encode() + b") ALL"
    cmd = parser.parse_command([line])
    opts, rest = esearch.parse_return(cmd.args)
    assert opts is not None and rest == [parser.Atom("ALL")]
    assert set(options) <= opts
    assert opts.partial == (None if partial is None else tuple(sorted(partial)))
    if not set(options) & {"MIN", "MAX", "COUNT", "ALL"} and partial is None and \
            (not options or "UPDATE" in options):
        assert "ALL" in opts


@pytest_twisted.ensureDeferred
async def test_a_failing_update_drops_the_context_not_the_reply(imap_host):
    host = await imap_host()
    await host.deliver(msg("x"))

    def start():
        c = host.client()
        raw(c, b"S1 SELECT INBOX")
        raw(c, b"A1 SEARCH RETURN (UPDATE) UNSEEN")
        return c

    c = await host.in_thread(start)
    (session,) = list(host.factory.sessions)

    async def broken(sel):
        raise OSError("disk on fire")

    context.contexts(session.selected)["A1"].rerun = broken

    def later():
        out = raw(c, b"B1 STORE 1 +FLAGS (\\Seen)")
        assert out[-1].startswith(b"B1 OK"), out
        assert raw(c, b"N1 NOOP") == [b"N1 OK NOOP completed"]  # seq contexts run here
        assert raw(c, b'C1 CANCELUPDATE "A1"')[-1].startswith(b"C1 BAD")

    await host.in_thread(later)
