"""RFC 3501 corner cases that answered wrongly (issue 16), over a real socket with imaplib.

Each test is named after the bug it pins; each failed on the code before the fix.
"""

from __future__ import annotations

import re

import pytest_twisted

from tests.imap.test_server_harness import imap_host_fixture, make_message, raw  # noqa: F401


@pytest_twisted.ensureDeferred
async def test_open_bracket_in_mailbox_names_is_an_atom_char_not_bad(imap_host):
    """``SELECT foo[bar`` and ``LIST "" foo[%`` were ``BAD Unbalanced [``: "[" is an
    ATOM-CHAR (only "]" is a resp-special)."""
    host = await imap_host()

    def run():
        c = host.client()
        out = raw(c, b"S1 SELECT foo[bar")
        assert out[-1].startswith(b"S1 NO [NONEXISTENT]"), out
        out = raw(c, b'L1 LIST "" foo[%')
        assert out == [b"L1 OK LIST completed"], out
        assert raw(c, b"C1 CREATE foo[bar")[-1].startswith(b"C1 OK")
        out = raw(c, b'L2 LIST "" foo[%')
        assert out[-1].startswith(b"L2 OK") and len(out) == 2, out
        assert out[0].startswith(b"* LIST (") and out[0].endswith((b' "." foo[bar', b' "." "foo[bar"')), out
        out = raw(c, b"S2 SELECT foo[bar")
        assert out[-1].startswith(b"S2 OK [READ-WRITE]"), out
        # A balanced section still keeps its spaces, and an unbalanced one in FETCH is
        # a BAD fetch attribute, not a framing error.
        assert raw(c, b"A1 APPEND foo[bar {5}\r\nhello")[-1].startswith(b"A1 OK")
        out = raw(c, b"F1 FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert out[-1].startswith(b"F1 OK"), out
        assert raw(c, b"F2 FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)")[-1].startswith(b"F2 BAD")
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_store_nil_is_a_keyword_not_bad(imap_host):
    """``STORE 1 +FLAGS NIL`` and ``+FLAGS (NIL)`` were BAD: NIL is a valid flag-keyword
    atom."""
    host = await imap_host()
    await host.deliver(make_message("one"))

    def run():
        c = host.client()
        c.select("INBOX")
        out = raw(c, b"T1 STORE 1 +FLAGS NIL")
        assert out[-1].startswith(b"T1 OK"), out
        assert any(re.match(rb"\* 1 FETCH \(FLAGS \(.*NIL.*\)\)", x) for x in out), out
        out = raw(c, b"T2 STORE 1 -FLAGS (NIL)")
        assert out[-1].startswith(b"T2 OK"), out
        assert b"NIL" not in c.fetch("1", "(FLAGS)")[1][0]
        assert raw(c, b"T3 STORE 1 +FLAGS (NIL $X)")[-1].startswith(b"T3 OK")
        assert c.search(None, "KEYWORD", "NIL") == ("OK", [b"1"])
        c.logout()

    await host.in_thread(run)


ODD_FROM = (b"From: <user-from (comment)@ (comment) domain.org>\r\n"
            b"To: \"Some One\" <some.one@example.test>, other@example.test (Other Person)\r\n"
            b"Cc: team: carol@example.test, =?utf-8?q?J=C3=B6rg?= <jorg@example.test>;\r\n"
            b"Subject: odd addresses\r\n\r\nbody\r\n")


@pytest_twisted.ensureDeferred
async def test_search_address_keys_match_parsed_addresses_not_raw_text(imap_host):
    """``SEARCH FROM user-from@domain.org`` did not match
    ``From: <user-from (comment)@ (comment) domain.org>``: FROM/TO/CC/BCC match the
    address as ENVELOPE shows it."""
    host = await imap_host()
    await host.deliver(make_message("plain"))
    await host.deliver(ODD_FROM)

    def run():
        c = host.client()
        c.select("INBOX")
        assert c.search(None, "FROM", "user-from@domain.org") == ("OK", [b"2"])
        assert c.search(None, "FROM", "USER-FROM@DOMAIN") == ("OK", [b"2"])
        # Comments are not part of the address; HEADER still searches the raw text.
        assert c.search(None, "FROM", "comment") == ("OK", [b""])
        assert c.search(None, "HEADER", "FROM", "comment") == ("OK", [b"2"])
        assert c.search(None, "TO", '"Some One <some.one@"') == ("OK", [b"2"])
        assert c.search(None, "TO", '"Other Person"') == ("OK", [b"2"])
        assert c.search(None, "CC", '"team:"') == ("OK", [b"2"])
        assert c.search(None, "CC", "J\u00f6rg".encode()) == ("OK", [b"2"])
        assert c.search(None, "CC", "jorg@example.test") == ("OK", [b"2"])
        assert c.search(None, "FROM", "bob@example.test") == ("OK", [b"1"])
        assert c.search(None, "NOT", "FROM", "bob") == ("OK", [b"2"])
        assert c.search(None, "BCC", "x") == ("OK", [b""])
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_search_recent_new_old_use_the_sessions_recent_set(imap_host):
    """Right after ``SELECT`` reported ``* 5 RECENT``, ``SEARCH RECENT``/``NEW`` found
    nothing and ``OLD`` found all five: they must use the session's \\Recent set, as
    FETCH FLAGS does."""
    host = await imap_host()
    for i in range(5):
        await host.deliver(make_message(f"m{i}"))

    def run():
        c = host.client()
        typ, _ = c.select("INBOX")
        assert c.untagged_responses.pop("RECENT") == [b"5"]
        assert c.search(None, "RECENT") == ("OK", [b"1 2 3 4 5"])
        assert c.search(None, "NEW") == ("OK", [b"1 2 3 4 5"])
        assert c.search(None, "OLD") == ("OK", [b""])
        assert b"\\Recent" in c.fetch("1", "(FLAGS)")[1][0]
        c.store("2", "+FLAGS", "(\\Seen)")
        assert c.search(None, "NEW") == ("OK", [b"1 3 4 5"])
        assert c.search(None, "NOT", "RECENT") == ("OK", [b""])
        # A second session: the first one owns \Recent, so none are recent here.
        c2 = host.client()
        c2.select("INBOX")
        assert c2.untagged_responses.pop("RECENT") == [b"0"]
        assert c2.search(None, "RECENT") == ("OK", [b""])
        assert c2.search(None, "OLD") == ("OK", [b"1 2 3 4 5"])
        c2.logout()
        # A message arriving while selected is recent for the session that reports it.
        c.append("INBOX", None, None, make_message("late"))
        c.noop()
        assert c.search(None, "RECENT") == ("OK", [b"1 2 3 4 5 6"])
        c.logout()

    await host.in_thread(run)


def _flags_before_fetch(out: list[bytes], keyword: bytes, fetch: bytes) -> None:
    """FLAGS and PERMANENTFLAGS naming ``keyword`` come before the first line that
    contains ``fetch``."""
    def first(pred) -> int:
        found = [i for i, x in enumerate(out) if pred(x)]
        assert found, out
        return found[0]

    flags = first(lambda x: x.startswith(b"* FLAGS (") and keyword in x)
    permanent = first(lambda x: x.startswith(b"* OK [PERMANENTFLAGS (") and keyword in x)
    assert flags < first(lambda x: fetch in x) and permanent < first(lambda x: fetch in x), out
    assert out[permanent].endswith(b"\\*)] Flags permitted"), out


@pytest_twisted.ensureDeferred
async def test_new_keyword_sends_flags_and_permanentflags_before_fetch(imap_host):
    """STORE/COPY/APPEND that brought a new keyword sent ``FETCH (FLAGS (... $Label3))``
    without first sending the updated FLAGS and PERMANENTFLAGS (RFC 3501 7.2.6)."""
    host = await imap_host()
    await host.deliver(make_message("one"))
    await host.deliver(make_message("two"), flags={"$Old"})

    def run():
        c = host.client()
        c.select("INBOX")
        other = host.client()
        other.select("INBOX")
        # STORE: this session.
        out = raw(c, b"T1 STORE 1 +FLAGS ($Label3)")
        assert out[-1].startswith(b"T1 OK"), out
        _flags_before_fetch(out, b"$Label3", b"FETCH")
        flags_line = next(x for x in out if x.startswith(b"* FLAGS"))
        assert b"$Old" in flags_line and b"\\Seen" in flags_line
        # A keyword already known sends no FLAGS again, nor does removing one no message
        # has; .SILENT still tells of a new one.
        out = raw(c, b"T2 STORE 2 +FLAGS ($Label3)")
        assert not any(x.startswith(b"* FLAGS") for x in out), out
        out = raw(c, b"T4 STORE 2 -FLAGS ($Never)")
        assert not any(x.startswith(b"* FLAGS") for x in out), out
        out = raw(c, b"T3 STORE 2 +FLAGS.SILENT ($Quiet)")
        assert [x for x in out if x.startswith(b"* ")][:1] == [
            next(x for x in out if x.startswith(b"* FLAGS"))], out
        assert b"$Quiet" in out[0]
        # The other session hears of both keywords before the FETCHes that show them.
        out = raw(other, b"N1 NOOP")
        _flags_before_fetch(out, b"$Label3", b"FETCH (FLAGS")
        assert b"$Quiet" in next(x for x in out if x.startswith(b"* FLAGS"))
        # APPEND to the selected mailbox with a new keyword: FLAGS before EXISTS.
        out = raw(c, b"A1 APPEND INBOX ($Appended) {5}\r\nhello")
        assert out[-1].startswith(b"A1 OK"), out
        _flags_before_fetch(out, b"$Appended", b"EXISTS")
        # COPY from another folder... of a message carrying a new keyword.
        c.create("Other")
        assert raw(c, b"A2 APPEND Other ($Copied) {5}\r\nhello")[-1].startswith(b"A2 OK")
        c.select("Other")
        c.copy("1", "INBOX")
        c.select("INBOX")
        assert b"$Copied" in c.untagged_responses.pop("FLAGS")[0]
        out = raw(other, b"N2 NOOP")
        _flags_before_fetch(out, b"$Copied", b"EXISTS")
        c.logout()
        other.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_move_to_the_selected_mailbox_is_copy_and_expunge(imap_host):
    """MOVE to the selected mailbox got ``NO [CANNOT]``; RFC 6851 defines MOVE as COPY +
    expunge, legal there: the message comes back with a new UID."""
    host = await imap_host()
    for i in range(3):
        await host.deliver(make_message(f"m{i}"), flags={"$Keep"} if i == 1 else ())

    def run():
        c = host.client()
        c.select("INBOX")
        other = host.client()
        other.select("INBOX")
        out = raw(c, b"M1 UID MOVE 2 INBOX")
        assert out[-1].startswith(b"M1 OK"), out
        copyuid = next(x for x in out if b"COPYUID" in x)
        assert re.match(rb"\* OK \[COPYUID \d+ 2 4\]", copyuid), out
        assert b"* 2 EXPUNGE" in out and b"* 3 EXISTS" in out, out
        assert out.index(copyuid) < out.index(b"* 2 EXPUNGE") < out.index(b"* 3 EXISTS")
        typ, data = c.fetch("1:*", "(UID FLAGS)")
        assert [re.search(rb"UID (\d+)", d).group(1) for d in data] == [b"1", b"3", b"4"]
        assert b"$Keep" in data[2] and b"\\Deleted" not in data[2]
        # By sequence number, several at once; the other session sees expunges + EXISTS.
        out = raw(c, b"M2 MOVE 1:2 INBOX")
        assert out[-1].startswith(b"M2 OK"), out
        assert re.match(rb"\* OK \[COPYUID \d+ 1,3 5:6\]", next(x for x in out if b"COPYUID" in x))
        typ, data = c.fetch("1:*", "(UID)")
        assert [re.search(rb"UID (\d+)", d).group(1) for d in data] == [b"4", b"5", b"6"]
        out = raw(other, b"N1 NOOP")
        assert out.count(b"* 1 EXPUNGE") + out.count(b"* 2 EXPUNGE") >= 1, out
        assert b"* 3 EXISTS" in out, out
        typ, data = other.fetch("1:*", "(UID)")
        assert [re.search(rb"UID (\d+)", d).group(1) for d in data] == [b"4", b"5", b"6"]
        c.logout()
        other.logout()

    await host.in_thread(run)
