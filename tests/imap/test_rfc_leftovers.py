"""The RFC audit's leftovers (issue 16, wave 9), each over a real socket with imaplib:

- RFC 9051 5.1 / RFC 6855 3: CREATE and RENAME refuse names with C0/C1 controls, DEL,
  U+2028/U+2029 or unassigned code points, in modified UTF-7 (rev1) and UTF-8 (rev2);
- RFC 9051 6.3.2: the LIST a rev2 SELECT/EXAMINE sends carries accurate attributes,
  ``\\Subscribed`` included;
- RFC 9051 4.3 / RFC 6855 3: ENVELOPE strings are UTF-8 quoted strings once UTF-8 is
  enabled (RFC 2047 words kept as sent, RFC 9051 7.5.2), literals before;
- RFC 9051 9 / RFC 3516 4.4: NUL in a plain literal is BAD; in a literal8 APPEND it is
  kept, its part re-encoded base64 (imaptest ``append-binary``).
"""

from __future__ import annotations

import base64
import imaplib
import re

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.imap import mime, rev2
from mailhost.imap.binary_append import without_nul
from mailhost.imap.responses import No
from tests.imap.test_server_harness import imap_host_fixture, raw  # noqa: F401


def _tagged(out: list[bytes], tag: bytes) -> bytes:
    assert out and out[-1].startswith(tag + b" "), out
    return out[-1][len(tag) + 1:]


# -- RFC 9051 5.1, RFC 6855 3: names with control characters ------------------------------

@pytest_twisted.ensureDeferred
async def test_create_and_rename_refuse_names_with_control_characters(imap_host):
    host = await imap_host(kind="maildir")

    def run():
        c = host.client()
        # rev1: modified UTF-7 (C0, C1), a raw control in a quoted string, DEL.
        for n, name in enumerate((b'"x&AAE-y"', b'"ok&AIA-"', b'"x\x01y"', b'"x\x7fy"',
                                  b'"a&ICg-b"')):
            tag = b"r%d" % n
            got = _tagged(raw(c, tag + b" CREATE " + name), tag)
            assert got.startswith(b"NO [CANNOT] Mailbox name contains"), (name, got)
        assert _tagged(raw(c, b"ok1 CREATE Entw&APw-rfe"), b"ok1").startswith(b"OK")
        got = _tagged(raw(c, b'rn1 RENAME Entw&APw-rfe "bad&AJ8-"'), b"rn1")
        assert got.startswith(b"NO [CANNOT]") and b"U+009F" in got, got
        # rev2: UTF-8 names.
        raw(c, b"e ENABLE IMAP4rev2")
        for n, name in enumerate(("z\u0085", "u\u2028v", "p\u2029", "d\x7f", "n\u0378",
                                  "t\tab")):
            tag = b"u%d" % n
            got = _tagged(raw(c, tag + b' CREATE "' + name.encode() + b'"'), tag)
            assert got.startswith(b"NO [CANNOT]") and b"U+%04X" % ord(name[1]) in got, got
        got = _tagged(raw(c, b'rn2 RENAME "Entw\xc3\xbcrfe" "q\xc2\x80"'), b"rn2")
        assert got.startswith(b"NO [CANNOT]"), got
        # Good UTF-8 names still work, and nothing bad was made.
        assert _tagged(raw(c, b'ok2 CREATE "\xe6\x97\xa5\xe6\x9c\xac"'), b"ok2").startswith(b"OK")
        listed = b"\n".join(raw(c, b'l LIST "" "*"'))
        assert b"Entw\xc3\xbcrfe" in listed and b"\xe6\x97\xa5\xe6\x9c\xac" in listed
        assert not re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]",
                             listed), listed
        c.logout()

    await host.in_thread(run)


# -- RFC 9051 6.3.2: the LIST of a rev2 SELECT carries \Subscribed ---------------------------

@pytest_twisted.ensureDeferred
async def test_rev2_select_list_carries_subscribed(imap_host):
    host = await imap_host(kind="maildir")

    def run():
        c = host.client()
        raw(c, b"e ENABLE IMAP4rev2")
        raw(c, b"c1 CREATE Work")
        raw(c, b"c2 CREATE Work.Sub")
        raw(c, b"c3 CREATE Other")
        raw(c, b"s1 SUBSCRIBE Work")
        out = raw(c, b"s SELECT Work")
        assert b'* LIST (\\HasChildren \\Subscribed) "." Work' in out, out
        out = raw(c, b"x EXAMINE Other")
        assert b'* LIST (\\HasNoChildren) "." Other' in out, out
        raw(c, b"s2 SUBSCRIBE Other")
        out = raw(c, b"x2 EXAMINE Other")
        assert b'* LIST (\\HasNoChildren \\Subscribed) "." Other' in out, out
        # The same attributes LIST gives when asked for them (RFC 9051 6.3.9).
        listed = raw(c, b'l LIST "" Other RETURN (SUBSCRIBED CHILDREN)')
        assert listed[0] == b'* LIST (\\HasNoChildren \\Subscribed) "." Other', listed
        c.logout()

    await host.in_thread(run)


# -- RFC 9051 4.3 / 7.5.2, RFC 6855 3: ENVELOPE strings in UTF-8 -------------------------------

EIGHT_BIT = (b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
             b"From: =?utf-8?q?J=C3=B6rg?= <j@example.test>\r\n"
             b"To: \xc3\xa9l\xc3\xa8ve <e@example.test>\r\n"
             b"Cc: Latin \xe9 <l@example.test>\r\n"
             b"Subject: caf\xc3\xa9 \"quoted\" =?utf-8?q?x?=\r\n"
             b"Message-ID: <1@example.test>\r\n\r\nhi\r\n")


@pytest_twisted.ensureDeferred
async def test_envelope_sends_utf8_quoted_once_enabled(imap_host):
    host = await imap_host(kind="maildir")
    await host.deliver(EIGHT_BIT)

    def envelope(enable: bytes | None) -> bytes:
        c = host.client()
        if enable:
            raw(c, b"e ENABLE " + enable)
        raw(c, b"s SELECT INBOX")
        out = raw(c, b"f FETCH 1 ENVELOPE")
        assert out[-1].startswith(b"f OK"), out
        c.logout()
        return b"\r\n".join(out[:-1])

    def run():
        rev1 = envelope(None)
        # rev1: 8-bit text only in literals; RFC 2047 words as sent.
        assert b"{28}\r\ncaf\xc3\xa9 " in rev1 and b'"caf' not in rev1, rev1
        assert b'(("=?utf-8?q?J=C3=B6rg?=" NIL "j" "example.test"))' in rev1
        for enable in (b"IMAP4rev2", b"UTF8=ACCEPT"):
            got = envelope(enable)
            assert b'"caf\xc3\xa9 \\"quoted\\" =?utf-8?q?x?="' in got, got
            assert b'(("\xc3\xa9l\xc3\xa8ve" NIL "e" "example.test"))' in got, got
            assert b'(("=?utf-8?q?J=C3=B6rg?=" NIL "j" "example.test"))' in got, got
            # Not UTF-8 (a raw Latin-1 byte): still a literal, never a bad quoted string.
            assert b"{7}\r\nLatin \xe9" in got, got

    await host.in_thread(run)


# -- RFC 9051 9, RFC 3516 4.4: NUL in APPEND ---------------------------------------------------

BINARY_MESSAGE = (b"From: user@domain.org\r\nDate: Sat, 24 Mar 2007 23:00:00 +0200\r\n"
                  b"Mime-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
                  b"--b\r\nContent-Type: application/octet-stream\r\n"
                  b"Content-Transfer-Encoding: binary\r\n\r\n\x00\xed\x00\r\n\r\nend"
                  b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nplain\r\n--b--\r\n")


@pytest_twisted.ensureDeferred
async def test_append_refuses_nul_in_a_literal_and_keeps_it_from_a_literal8(imap_host):
    host = await imap_host(kind="maildir")

    def run():
        c = host.client()
        # A plain literal may not hold NUL (literal = *CHAR8): BAD, small or streamed.
        out = raw(c, b"a1 APPEND INBOX {%d+}\r\n" % len(BINARY_MESSAGE) + BINARY_MESSAGE)
        assert _tagged(out, b"a1").startswith(b"BAD"), out
        big = BINARY_MESSAGE.replace(b"end", b"x" * 100_000)
        out = raw(c, b"a2 APPEND INBOX {%d+}\r\n" % len(big) + big)
        assert _tagged(out, b"a2").startswith(b"BAD"), out
        with pytest.raises(imaplib.IMAP4.error, match="NUL in a literal"):
            c.append("INBOX", None, None, BINARY_MESSAGE)  # imaplib: a {n} literal
        # In a literal8: stored, its part re-encoded base64, nothing lost.
        for tag, data in ((b"b1", BINARY_MESSAGE), (b"b2", big)):
            out = raw(c, tag + b" APPEND INBOX ~{%d+}\r\n" % len(data) + data)
            assert _tagged(out, tag).startswith(b"OK [APPENDUID"), out
        # CATENATE: NUL in a TEXT literal is BAD, in a TEXT literal8 NO [UNKNOWN-CTE].
        part = b"Subject: c\r\n\r\na\0b\r\n"
        out = raw(c, b"c1 APPEND INBOX CATENATE (TEXT {%d+}\r\n" % len(part) + part + b")")
        assert _tagged(out, b"c1").startswith(b"BAD"), out
        out = raw(c, b"c2 APPEND INBOX CATENATE (TEXT ~{%d+}\r\n" % len(part) + part + b")")
        assert _tagged(out, b"c2").startswith(b"NO [UNKNOWN-CTE]"), out
        assert c.select("INBOX")[1] == [b"2"]
        for seq, data in ((1, BINARY_MESSAGE), (2, big)):
            part = data.split(b"binary\r\n\r\n", 1)[1].split(b"\r\n--b", 1)[0]
            typ, got = c.fetch(str(seq), "(BODY.PEEK[1] BODY.PEEK[1.MIME] BINARY.PEEK[1]"
                                         " BINARY.SIZE[1] BODY.PEEK[2])")
            assert typ == "OK", got
            # imaplib: [(head+body[1], data), (mime, data), (binary, data), (.. size, body2)]
            body1, mime1, binary1 = got[0][1], got[1][1], got[2][1]
            assert b"\0" not in body1 and base64.b64decode(body1) == part
            assert b"Content-Transfer-Encoding: base64" in mime1 and b"binary" not in mime1
            assert binary1 == part
            assert b"BINARY.SIZE[1] %d" % len(part) in got[3][0], got[3][0]
            assert got[3][1] == b"plain"
        c.logout()

    await host.in_thread(run)


# -- hypothesis: the name rule and the NUL re-encoding -----------------------------------------

_FORBIDDEN = [*map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0)), "\u2028", "\u2029"]


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cn", "Zl", "Zp")), min_size=1,
               max_size=30),
       st.sampled_from(_FORBIDDEN), st.integers(0, 30))
def test_names_are_refused_exactly_for_forbidden_code_points(good, bad, at):
    rev2.check_new_name(good)  # no exception
    with pytest.raises(No, match=f"U\\+{ord(bad):04X}"):
        rev2.check_new_name(good[:at] + bad + good[at:])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.booleans(), st.sampled_from(["", "binary", "8bit", "7BIT"]))
def test_nul_reencoding_loses_nothing(payload, multipart, cte):
    payload += b"\0"
    field = f"Content-Transfer-Encoding: {cte}\r\n".encode() if cte else b""
    if multipart:
        message = (b"Subject: s\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n"
                   + field + b"\r\n" + payload + b"\r\n--zz\r\n\r\ntext\r\n--zz--\r\n")
    else:
        message = b"Subject: s\r\n" + field + b"\r\n" + payload
    out = without_nul(message)
    assert b"\0" not in out
    root = mime.scan_bytes(out)
    part = root.children[0] if multipart else root
    assert (part.encoding or "").upper() == "BASE64"
    assert base64.b64decode(out[part.body_start:part.body_end]) == payload
    assert out.count(b"Content-Transfer-Encoding") == 1
