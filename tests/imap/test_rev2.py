"""IMAP4rev2 (RFC 9051), UTF8=ACCEPT (RFC 6855) and LITERAL- (RFC 7888) over a real
socket: each behaviour rev2 changes, before and after ``ENABLE IMAP4rev2``, UTF-8 names
seen in modified UTF-7 by a rev1 session, by imapclient and by Dovecot on the same
Maildir, and hypothesis round trips for the new name and APPEND UTF8 parsing."""

from __future__ import annotations

import imaplib
import shutil
import unicodedata

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from imapclient import IMAPClient
from twisted.internet import threads

from mailhost.imap import parser, rev2
from mailhost.imap.server import CAPABILITIES
from tests.dovecot_process import Dovecot
from tests.imap.test_server_harness import (  # noqa: F401
    ALICE,
    imap_host_fixture,
    make_message,
    raw,
)

RESUME = "Résumé"
RESUME_MUTF7 = b"R&AOk-sum&AOk-"


def _untagged(c: imaplib.IMAP4, line: bytes) -> list[bytes]:
    out = raw(c, line)
    assert out[-1].startswith(line.split(b" ", 1)[0] + b" OK"), out
    return out[:-1]


def _status(c: imaplib.IMAP4, line: bytes) -> bytes:
    out = raw(c, line)
    return out[-1].split(b" ", 2)[1]


def _enable_rev2(c: imaplib.IMAP4) -> None:
    assert _untagged(c, b"E ENABLE IMAP4rev2") == [b"* ENABLED IMAP4rev2"]


async def _host(imap_host, messages: int = 2):
    host = await imap_host(kind="maildir")
    for i in range(messages):
        await host.deliver(make_message(f"m{i}"), flags=("\\Seen",) if i == 0 else ())
    return host


# -- capabilities and ENABLE -------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_rev2_utf8_accept_and_literal_minus_are_advertised_and_enabled(imap_host):
    host = await _host(imap_host, 0)

    def run():
        c = host.client(login=False)
        caps = _untagged(c, b"C CAPABILITY")[0].split()
        for cap in (b"IMAP4rev1", b"IMAP4rev2", b"UTF8=ACCEPT", b"LITERAL+", b"LITERAL-"):
            assert cap in caps
        c.login(*ALICE)
        assert _untagged(c, b"E ENABLE UTF8=ACCEPT IMAP4rev2 CONDSTORE X-UNKNOWN") == [
            b"* ENABLED UTF8=ACCEPT IMAP4rev2 CONDSTORE"]
        # A non-synchronizing literal (LITERAL-: up to 4096 octets; LITERAL+: any size).
        c.send(b"L1 CREATE {5+}\r\nsmall\r\n")
        assert c.readline().startswith(b"L1 OK")
        big = make_message("big", size=5000)
        c.send(b"L2 APPEND small {%d+}\r\n" % len(big) + big + b"\r\n")
        assert c.readline().startswith(b"L2 OK [APPENDUID")
        c.logout()

    assert b"IMAP4rev2" in CAPABILITIES
    await host.in_thread(run)


# -- SELECT: no RECENT, no [UNSEEN], an untagged LIST, [CLOSED] ------------------------------

@pytest_twisted.ensureDeferred
async def test_select_has_recent_and_unseen_in_rev1_and_a_list_in_rev2(imap_host):
    host = await _host(imap_host)

    def run():
        c = host.client()
        before = _untagged(c, b"S SELECT INBOX")
        assert b"* 2 RECENT" in before
        assert b"* OK [UNSEEN 2] First unseen" in before
        assert not any(x.startswith(b"* LIST") for x in before)
        assert b"\\Recent" in b"".join(_untagged(c, b"F FETCH 2 FLAGS"))
        _enable_rev2(c)
        after = _untagged(c, b"S2 EXAMINE INBOX")
        assert after[0] == b"* OK [CLOSED] Previous mailbox closed"
        assert b"* 2 EXISTS" in after
        assert b'* LIST (\\HasNoChildren \\Subscribed) "." INBOX' in after
        assert not any(b"RECENT" in x or b"UNSEEN" in x for x in after), after
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_no_recent_flag_or_response_after_enable(imap_host):
    host = await _host(imap_host)

    def run():
        c = host.client()
        _enable_rev2(c)
        _untagged(c, b"S SELECT INBOX")
        flags = b"".join(_untagged(c, b"F FETCH 1:* FLAGS"))
        assert b"\\Recent" not in flags and flags.count(b"FETCH") == 2
        return c

    c = await host.in_thread(run)
    await host.deliver(make_message("late"))

    def more():
        lines = _untagged(c, b"N NOOP")
        assert b"* 3 EXISTS" in lines
        assert not any(b"RECENT" in x for x in lines), lines
        assert b"\\Recent" not in b"".join(_untagged(c, b"F FETCH 3 FLAGS"))
        c.logout()

    await host.in_thread(more)


@pytest_twisted.ensureDeferred
async def test_another_sessions_changes_reach_rev2_with_uid_and_without_recent(imap_host):
    host = await _host(imap_host)

    def run():
        a, b = host.client(), host.client()
        _enable_rev2(a)
        _untagged(a, b"S SELECT INBOX")
        _untagged(b, b"S SELECT INBOX")
        _untagged(b, b"F STORE 2 +FLAGS.SILENT (\\Flagged)")
        b.logout()
        return a

    a = await host.in_thread(run)
    await host.deliver(make_message("late"))

    def idle():
        a.send(b"I IDLE\r\n")
        assert a.readline().startswith(b"+")
        seen = []
        for _ in range(10):
            try:
                seen.append(a.readline().rstrip(b"\r\n"))
            except TimeoutError:
                raise AssertionError(seen) from None
            if any(b"EXISTS" in x for x in seen) and any(b"FETCH" in x for x in seen):
                break
        a.send(b"DONE\r\n")
        seen += _untagged(a, b"N NOOP")
        assert b"* 2 FETCH (UID 2 FLAGS (\\Flagged))" in seen, seen
        assert b"* 3 EXISTS" in seen and not any(b"RECENT" in x for x in seen), seen
        a.logout()

    await host.in_thread(idle)


@pytest_twisted.ensureDeferred
async def test_recent_response_still_comes_without_enable(imap_host):
    host = await _host(imap_host)
    c = await host.in_thread(lambda: host.client())
    await host.in_thread(_untagged, c, b"S SELECT INBOX")
    await host.deliver(make_message("late"))

    def more():
        lines = _untagged(c, b"N NOOP")
        assert b"* 3 EXISTS" in lines and b"* 3 RECENT" in lines
        c.logout()

    await host.in_thread(more)


@pytest_twisted.ensureDeferred
async def test_enable_while_selected_drops_recent_from_then_on(imap_host):
    host = await _host(imap_host)

    def run():
        c = host.client()
        _untagged(c, b"S SELECT INBOX")
        assert b"\\Recent" in b"".join(_untagged(c, b"F FETCH 1 FLAGS"))
        _enable_rev2(c)
        assert b"\\Recent" not in b"".join(_untagged(c, b"F FETCH 1 FLAGS"))
        c.logout()

    await host.in_thread(run)


# -- SEARCH, STATUS --------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_search_is_answered_with_esearch_after_enable(imap_host):
    host = await _host(imap_host, 3)

    def run():
        c = host.client()
        _untagged(c, b"S SELECT INBOX")
        assert _untagged(c, b"T SEARCH UNSEEN") == [b"* SEARCH 2 3"]
        assert _status(c, b"R SEARCH RECENT") == b"OK"
        assert _status(c, b"R SEARCH NEW") == b"OK"
        _enable_rev2(c)
        assert _untagged(c, b"T SEARCH UNSEEN") == [b'* ESEARCH (TAG "T") ALL 2:3']
        assert _untagged(c, b"U UID SEARCH ALL") == [b'* ESEARCH (TAG "U") UID ALL 1:3']
        assert _untagged(c, b"V SEARCH DELETED") == [b'* ESEARCH (TAG "V")']
        assert _untagged(c, b"W SEARCH RETURN (COUNT) ALL") == [b'* ESEARCH (TAG "W") COUNT 3']
        for key in (b"RECENT", b"NEW", b"OLD", b"NOT OLD", b"OR SEEN RECENT"):
            assert _status(c, b"R SEARCH " + key) == b"BAD", key
        assert _status(c, b"R SORT (DATE) UTF-8 NEW") == b"BAD"
        assert _untagged(c, b"X SEARCH CHARSET UTF-8 SUBJECT m1") == [
            b'* ESEARCH (TAG "X") ALL 2']
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_status_recent_is_gone_and_deleted_size_stay_after_enable(imap_host):
    host = await _host(imap_host, 2)

    def run():
        c = host.client()
        assert _untagged(c, b"S STATUS INBOX (MESSAGES RECENT)") == [
            b"* STATUS INBOX (MESSAGES 2 RECENT 2)"]
        _enable_rev2(c)
        assert _status(c, b"S STATUS INBOX (MESSAGES RECENT)") == b"BAD"
        assert _status(c, b'S LIST "" "*" RETURN (STATUS (RECENT))') == b"BAD"
        line = _untagged(c, b"S STATUS INBOX (MESSAGES DELETED SIZE)")[0]
        assert line.startswith(b"* STATUS INBOX (MESSAGES 2 DELETED 0 SIZE ")
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_search_charset_is_bad_once_utf8_accept_is_enabled(imap_host):
    host = await _host(imap_host, 2)

    def run():
        c = host.client()
        _untagged(c, b"S SELECT INBOX")
        assert _status(c, b"T SEARCH CHARSET UTF-8 ALL") == b"OK"
        _untagged(c, b"E ENABLE UTF8=ACCEPT")
        assert _status(c, b"T SEARCH CHARSET UTF-8 ALL") == b"BAD"
        assert _untagged(c, b"T SEARCH ALL") == [b"* SEARCH 1 2"]  # rev1 still
        c.logout()

    await host.in_thread(run)


# -- mailbox names in UTF-8 ----------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_utf8_names_in_rev2_are_mutf7_to_a_rev1_session_and_imapclient(imap_host):
    host = await _host(imap_host, 0)
    name = RESUME.encode()

    def run():
        c = host.client()
        _enable_rev2(c)
        assert _status(c, b'C CREATE "' + name + b'.Caf\xc3\xa9"') == b"OK"
        listed = _untagged(c, b'L LIST "" "R*"')
        assert listed == [b'* LIST (\\HasChildren) "." "' + name + b'"',
                          b'* LIST (\\HasNoChildren) "." "' + name + b'.Caf\xc3\xa9"']
        sel = _untagged(c, b'S SELECT "' + name + b'"')
        assert b'* LIST (\\HasChildren) "." "' + name + b'"' in sel
        assert _untagged(c, b'T STATUS "' + name + b'" (MESSAGES)') == [
            b'* STATUS "' + name + b'" (MESSAGES 0)']
        # "&" is an ordinary character in a UTF-8 name
        assert _status(c, b'C CREATE "A&B"') == b"OK"
        c.logout()

        old = host.client()
        names = [x for x in _untagged(old, b'L LIST "" "*"') if b"R&" in x or b"A&" in x]
        assert names == [b'* LIST (\\HasNoChildren) "." A&-B',
                         b'* LIST (\\HasChildren) "." ' + RESUME_MUTF7,
                         b'* LIST (\\HasNoChildren) "." ' + RESUME_MUTF7 + b".Caf&AOk-"]
        assert _status(old, b"S SELECT " + RESUME_MUTF7) == b"OK"
        old.logout()

        ic = IMAPClient("127.0.0.1", port=host.port, ssl=False, timeout=10)
        ic.login(*ALICE)
        folders = {f[2] for f in ic.list_folders()}
        assert {RESUME, RESUME + ".Café", "A&B"} <= folders
        ic.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_rev1_name_created_in_mutf7_is_utf8_to_a_rev2_session(imap_host):
    host = await _host(imap_host, 0)

    def run():
        c = host.client()
        assert _status(c, b"C CREATE " + RESUME_MUTF7) == b"OK"
        assert _untagged(c, b'L LIST "" ' + RESUME_MUTF7) == [
            b'* LIST (\\HasNoChildren) "." ' + RESUME_MUTF7]
        _untagged(c, b"E ENABLE UTF8=ACCEPT")
        assert _untagged(c, b'L LIST "" "R%"') == [
            b'* LIST (\\HasNoChildren) "." "' + RESUME.encode() + b'"']
        # once UTF-8 is on, "&AOk-" is five characters, not an encoded é
        assert _status(c, b"S SELECT " + RESUME_MUTF7) == b"NO"
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_decomposed_utf8_name_is_normalized_with_oldname_on_select(imap_host):
    host = await _host(imap_host, 0)
    nfd = unicodedata.normalize("NFD", RESUME).encode()

    def run():
        c = host.client()
        _enable_rev2(c)
        assert _status(c, b'C CREATE "' + nfd + b'"') == b"OK"
        assert _untagged(c, b'L LIST "" "R*"') == [
            b'* LIST (\\HasNoChildren) "." "' + RESUME.encode() + b'"']
        sel = _untagged(c, b'S SELECT "' + nfd + b'"')
        assert (b'* LIST (\\HasNoChildren) "." "' + RESUME.encode() + b'" ("OLDNAME" ("'
                + nfd + b'"))') in sel
        c.logout()

    await host.in_thread(run)


# -- LIST, RENAME, INBOX children --------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_hierarchy_name_without_mailbox_is_nonexistent_in_rev2(imap_host, tmp_path):
    host = await _host(imap_host, 0)
    # as mutt or Dovecot leave it: a Maildir++ folder whose parent is no folder
    for sub in ("cur", "new", "tmp"):
        (tmp_path / "mail/example.test/alice/.Work.Projects" / sub).mkdir(parents=True)

    def run():
        c = host.client()
        assert b'* LIST (\\Noselect \\HasChildren) "." Work' in _untagged(c, b'L LIST "" %')
        _enable_rev2(c)
        assert b'* LIST (\\NonExistent \\HasChildren) "." Work' in _untagged(
            c, b'L LIST "" %')
        # \Subscribed only when asked for (RFC 9051 6.3.9, as RFC 5258)
        _untagged(c, b"U SUBSCRIBE Work.Projects")
        assert _untagged(c, b'L LIST "" Work.Projects') == [
            b'* LIST (\\HasNoChildren) "." Work.Projects']
        assert _untagged(c, b'L LIST "" Work.Projects RETURN (SUBSCRIBED)') == [
            b'* LIST (\\HasNoChildren \\Subscribed) "." Work.Projects']
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_rename_sends_list_with_oldname_in_rev2_only(imap_host):
    host = await _host(imap_host, 0)

    def run():
        c = host.client()
        _untagged(c, b"C CREATE A")
        assert _untagged(c, b"R RENAME A B") == []
        _enable_rev2(c)
        assert _untagged(c, b'R RENAME B "' + RESUME.encode() + b'"') == [
            b'* LIST () "." "' + RESUME.encode() + b'" ("OLDNAME" (B))']
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_inbox_children_are_listed_in_both_revisions(imap_host):
    host = await _host(imap_host, 0)

    def run():
        c = host.client()
        assert _status(c, b"C CREATE INBOX.Kid") == b"OK"
        for enable in (False, True):
            if enable:
                _enable_rev2(c)
            assert _untagged(c, b'L LIST "" INBOX.%') == [
                b'* LIST (\\HasNoChildren) "." INBOX.Kid']
            assert b'* LIST (\\HasChildren) "." INBOX' in _untagged(c, b'L LIST "" %')
            assert _untagged(c, b'L LIST "" inbox') == [b'* LIST (\\HasChildren) "." INBOX']
        assert _status(c, b"S SELECT inbox.Kid") == b"OK"
        c.logout()

    await host.in_thread(run)


# -- keywords, BINARY, UID EXPUNGE, APPEND UTF8 ----------------------------------------------

@pytest_twisted.ensureDeferred
async def test_rev2_keywords_binary_and_uid_expunge(imap_host):
    host = await _host(imap_host, 2)
    kws = b"$Forwarded $Junk $MDNSent $NotJunk $Phishing"

    def run():
        c = host.client()
        _enable_rev2(c)
        _untagged(c, b"S SELECT INBOX")
        assert _status(c, b"K STORE 1 +FLAGS.SILENT (" + kws + b")") == b"OK"
        flags = _untagged(c, b"F FETCH 1 FLAGS")[0]
        assert flags.endswith(b"FLAGS (\\Seen " + kws + b"))"), flags
        got = _untagged(c, b"B FETCH 2 (BINARY.SIZE[1] BINARY.PEEK[1])")
        assert b"BINARY.SIZE[1] 14" in got[0], got
        _untagged(c, b"D STORE 1:2 +FLAGS.SILENT (\\Deleted)")
        assert _untagged(c, b"X UID EXPUNGE 2") == [b"* 2 EXPUNGE"]
        assert _untagged(c, b"U UID SEARCH ALL") == [b'* ESEARCH (TAG "U") UID ALL 1']
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_append_utf8_literal8_needs_utf8_enabled(imap_host):
    host = await _host(imap_host, 0)
    msg = ("From: Zoë <zoe@example.test>\r\nSubject: Grüße\r\n\r\nHallo.\r\n").encode()

    def run():
        c = host.client()
        cmd = b"A APPEND INBOX UTF8 (~{%d+}\r\n" % len(msg)
        c.send(cmd + msg + b")\r\n")
        assert c.readline().startswith(b"A BAD")
        _untagged(c, b"E ENABLE UTF8=ACCEPT")
        c.send(b"A APPEND INBOX (\\Seen) UTF8 (~{%d}\r\n" % len(msg))
        assert c.readline().startswith(b"+")
        c.send(msg + b")\r\n")
        assert c.readline().startswith(b"A OK [APPENDUID")
        c.send(b"M APPEND INBOX UTF8 (~{%d+}\r\n" % len(msg) + msg + b") UTF8 (~{%d+}\r\n"
               % len(msg) + msg + b")\r\n")  # MULTIAPPEND
        assert c.readline().startswith(b"M OK [APPENDUID")
        assert _status(c, b"A APPEND INBOX UTF8 (x)") == b"BAD"
        c.select("INBOX")
        typ, data = c.fetch(b"1:3", b"(FLAGS BODY.PEEK[])")
        bodies = [d[1] for d in data if isinstance(d, tuple)]
        assert bodies == [msg, msg, msg]
        c.logout()

    await host.in_thread(run)


# -- Dovecot on the same Maildir ------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_dovecot_sees_a_folder_a_rev2_client_created_in_utf8(imap_host, tmp_path):
    if shutil.which("dovecot") is None:
        pytest.fail("dovecot is not installed (CI: apt-get install -y dovecot-imapd)")
    host = await imap_host(kind="maildir")
    name = (RESUME + ".Café").encode()

    def ours():
        c = host.client()
        _enable_rev2(c)
        assert _status(c, b'C CREATE "' + name + b'"') == b"OK"
        c.send(b'A APPEND "' + name + b'" {%d+}\r\n' % len(make_message("x"))
               + make_message("x") + b"\r\n")
        assert c.readline().startswith(b"A OK")
        c.logout()

    await threads.deferToThread(ours)
    await host.store.close()
    dv = Dovecot(str(tmp_path / "mail"), {ALICE[0]: ALICE[1]})

    def theirs():
        dv.start()
        try:
            c = imaplib.IMAP4("127.0.0.1", dv.port, timeout=10)
            c.login(*ALICE)
            try:
                listed = _untagged(c, b'L LIST "" "R*"')
                status = _untagged(c, b"S STATUS " + RESUME_MUTF7 + b".Caf&AOk- (MESSAGES)")
                return listed, status
            finally:
                c.logout()
        finally:
            dv.stop()

    listed, status = await threads.deferToThread(theirs)
    assert any(x.endswith(b'"." ' + RESUME_MUTF7 + b".Caf&AOk-") for x in listed), listed
    assert status == [b"* STATUS " + RESUME_MUTF7 + b".Caf&AOk- (MESSAGES 1)"]


# -- hypothesis: the new parsing --------------------------------------------------------------

_NAME_CHARS = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\r\n\x00")


def _segments(prefix: bytes, encoded: bytes, suffix: bytes = b"") -> list[bytes]:
    """A command line carrying ``encoded`` (an atom, quoted string or literal)."""
    if encoded.startswith(b"{"):
        marker, data = encoded.split(b"\r\n", 1)
        return [prefix + marker, data, suffix]
    return [prefix + encoded + suffix]


@settings(max_examples=300, deadline=None)
@given(st.text(_NAME_CHARS, min_size=1, max_size=60))
def test_utf8_name_round_trips_through_the_wire(name):
    encoded = rev2.encode_name(name, True)
    cmd = parser.parse_command(_segments(b"T SELECT ", encoded))
    assert rev2.decode_name(parser.as_string(cmd.args[0]), True) == unicodedata.normalize(
        "NFC", name)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=4),
       st.sampled_from([b"", b"(\\Seen) ", b'(\\Flagged $Junk) "05-Dec-2026 04:00:00 +0000" ']))
def test_append_utf8_items_unwrap_to_the_same_messages(messages, head):
    class Session:
        enabled = {rev2.UTF8_ACCEPT}

    segments = [b"A APPEND INBOX " + head]
    for i, m in enumerate(messages):
        segments[-1] += b"UTF8 (~{%d+}" % len(m)
        segments += [m, b")" + (b" " if i + 1 < len(messages) else b"")]
    cmd = parser.parse_command(segments)
    mailbox, parsed = parser.parse_append(rev2.unwrap_append(Session(), cmd.args))
    assert mailbox == b"INBOX"
    assert [p[2] for p in parsed] == messages
