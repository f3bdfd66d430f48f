"""CATENATE (RFC 4469) with IMAP URLs (RFC 5092) over a real socket: the RFC's example
(a draft's header and parts joined with new text), URLs to parts and ;PARTIAL= ranges,
[BADURL] for every way a URL can fail, [TOOBIG], inside a MULTIAPPEND (all or none),
a 20 MB part copied with bounded memory; and hypothesis round-trips of the URL parser."""

from __future__ import annotations

import re

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.imap import imapurl
from tests.imap.test_server_harness import RssSampler, imap_host_fixture, raw  # noqa: F401

DRAFT = (b"From: a@example.test\r\nSubject: draft\r\nMIME-Version: 1.0\r\n"
         b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
         b"--b1\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
         b"--b1\r\nContent-Type: application/octet-stream\r\n\r\nsecond part\r\n--b1--\r\n")


def lit(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


def fetch_body(c, uid: int) -> bytes:
    typ, data = c.uid("FETCH", str(uid), "(BODY.PEEK[])")
    assert typ == "OK", data
    return data[0][1]


@pytest_twisted.ensureDeferred
async def test_catenate_rfc4469_example_and_urls(imap_host):
    host = await imap_host(kind="maildir")
    await host.deliver(DRAFT, folder="Drafts")
    validity = (await host.folder("Drafts")).uid_validity

    def run():
        c = host.client()
        assert b"CATENATE" in raw(c, b"C CAPABILITY")[0].split()
        base = b'"/Drafts;UIDVALIDITY=%d/;UID=1' % validity
        header, mime1, part1 = (base + b'/;section=HEADER"', base + b'/;section=1.MIME"',
                                base + b'/;section=1"')
        new_text = b"--b1\r\nContent-Type: text/plain\r\n\r\nnew part\r\n--b1--\r\n"
        out = raw(c, b"A003 APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE (URL " + header
                  + b" TEXT " + lit(b"--b1\r\n") + b" URL " + mime1 + b" URL " + part1
                  + b" TEXT " + lit(b"\r\n" + new_text) + b")")
        assert out[-1].startswith(b"A003 OK [APPENDUID %d 2]" % validity), out
        c.select("Drafts")
        want = (DRAFT[:DRAFT.index(b"\r\n\r\n") + 4] + b"--b1\r\n"
                + b"Content-Type: text/plain\r\n\r\n" + b"first part" + b"\r\n" + new_text)
        assert fetch_body(c, 2) == want
        typ, data = c.uid("FETCH", "2", "(FLAGS)")
        assert b"\\Seen" in data[0] and b"$MDNSent" in data[0]
        # Absolute URLs (our user), ;PARTIAL= (RFC 5550), the whole message, HEADER.FIELDS.
        url = (b'"imap://alice%40example.test@localhost/Drafts/;UID=1/;PARTIAL=6.14"')
        out = raw(c, b"A1 APPEND INBOX CATENATE (URL " + url + b" TEXT " + lit(b"\r\n") + b")")
        assert out[-1].startswith(b"A1 OK"), out
        c.select("INBOX")
        assert fetch_body(c, 1) == DRAFT[6:20] + b"\r\n"
        out = raw(c, b'A2 APPEND INBOX CATENATE (URL "/Drafts/;UID=1/;SECTION=HEADER.FIELDS%20(SUBJECT)"'
                  b' TEXT ' + lit(b"body\r\n") + b" URL \"/Drafts/;UID=1\")")
        assert out[-1].startswith(b"A2 OK"), out
        assert fetch_body(c, 2) == b"Subject: draft\r\n\r\nbody\r\n" + DRAFT
        # Every way a URL fails: NO [BADURL <url>], nothing appended.
        for n, bad in enumerate([
                b'"/Drafts;UIDVALIDITY=1/;UID=1"', b'"/Drafts/;UID=99"', b'"/Nope/;UID=1"',
                b'"imap://bob%40example.test@localhost/INBOX/;UID=1"', b'"/Drafts"',
                b'"/Drafts/;UID=1/;SECTION=BOGUS"', b'"http://example.test/"',
                b'"/Drafts/;UID=1;URLAUTH=anonymous:INTERNAL:00"']):
            tag = b"B%d" % n
            out = raw(c, tag + b" APPEND INBOX CATENATE (TEXT " + lit(b"x\r\n") + b" URL " + bad
                      + b")")
            assert out[-1].startswith(tag + b" NO [BADURL " + bad.strip(b'"')), out
        assert raw(c, b"N NOOP")[-1].startswith(b"N OK")
        assert c.select("INBOX")[1] == [b"2"]
        # Syntax: BAD.
        assert raw(c, b"S1 APPEND INBOX CATENATE ()")[-1].startswith(b"S1 BAD")
        assert raw(c, b"S2 APPEND INBOX CATENATE (TEXT \"x\")")[-1].startswith(b"S2 BAD")
        assert raw(c, b"S3 APPEND INBOX CATENATE (FOO " + lit(b"x") + b")")[-1].startswith(
            b"S3 BAD")
        # MULTIAPPEND with a CATENATE message: all or none.
        out = raw(c, b"M1 APPEND INBOX " + lit(b"Subject: plain\r\n\r\nx\r\n")
                  + b" CATENATE (URL \"/Drafts/;UID=1/;SECTION=1\" TEXT " + lit(b"\r\n") + b")")
        assert out[-1].startswith(b"M1 OK [APPENDUID"), out
        assert re.search(rb"APPENDUID \d+ 3:4", out[-1]), out
        out = raw(c, b"M2 APPEND INBOX " + lit(b"Subject: plain\r\n\r\nx\r\n")
                  + b' CATENATE (URL "/Drafts/;UID=7")')
        assert out[-1].startswith(b"M2 NO [BADURL"), out
        assert c.select("INBOX")[1] == [b"4"]
        # To a folder that does not exist.
        out = raw(c, b"T1 APPEND Nope CATENATE (TEXT " + lit(b"x\r\n") + b")")
        assert out[-1].startswith(b"T1 NO [TRYCREATE]"), out
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_toobig_and_big_part_streams(imap_host):
    host = await imap_host(kind="maildir", max_literal_size=30 * 1024 * 1024)
    big = (b"From: a@example.test\r\nSubject: big\r\n\r\n"
           + (b"y" * 998 + b"\r\n") * 20_000)  # 20 MB
    await host.deliver(big)

    def run():
        c = host.client()
        with RssSampler() as rss:
            out = raw(c, b'A APPEND INBOX CATENATE (URL "/INBOX/;UID=1" URL "/INBOX/;UID=1/;SECTION=TEXT")')
        assert out[-1].startswith(b"A NO [TOOBIG]"), out
        with RssSampler() as rss:
            out = raw(c, b'B APPEND INBOX CATENATE (URL "/INBOX/;UID=1" TEXT ' + lit(b"end\r\n")
                      + b")")
        assert out[-1].startswith(b"B OK"), out
        assert rss.grown_mib < 15, rss.grown_mib
        c.select("INBOX")
        typ, data = c.uid("FETCH", "2", "(RFC822.SIZE)")
        assert b"RFC822.SIZE %d" % (len(big) + 5) in data[0]
        c.logout()

    await host.in_thread(run)


_name = st.text(st.characters(blacklist_categories=("Cs",)),
                min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(mailbox=_name, uid=st.integers(1, 2**32 - 1),
       validity=st.none() | st.integers(1, 2**32 - 1),
       section=st.none() | st.sampled_from(["1", "1.2.MIME", "HEADER", "TEXT",
                                            "HEADER.FIELDS (SUBJECT FROM)", "2.HEADER"]),
       partial=st.none() | st.tuples(st.integers(0, 2**32 - 1),
                                     st.none() | st.integers(1, 2**32 - 1)),
       user=st.none() | st.text(min_size=1, max_size=10),
       absolute=st.booleans(),
       access=st.none() | st.sampled_from(["anonymous", "authuser", "submit+bob@example.test",
                                           "user+alice@example.test"]))
def test_url_round_trip(mailbox, uid, validity, section, partial, user, absolute, access):
    url = imapurl.ImapUrl(mailbox=mailbox, uid=uid, uidvalidity=validity, section=section,
                          partial=partial, user=user if absolute else None,
                          host="mail.example.test" if absolute else None,
                          port=143 if absolute and uid % 2 else None,
                          access=access, mechanism="INTERNAL" if access else None,
                          token=("ab" * 16) if access else None)
    text = url.format()
    assert text.isascii()
    assert imapurl.parse(text) == url
    assert imapurl.parse(text).format() == text


@pytest.mark.parametrize("text", ["", "/", "/INBOX", "/INBOX/;UID=0", "/INBOX/;UID=x",
                                  "imap://host", "/INBOX/;UID=1/;PARTIAL=", "/%FF/;UID=1",
                                  "/INBOX/;UID=99999999999"])
def test_url_parser_refuses(text):
    with pytest.raises(imapurl.BadUrl):
        imapurl.parse(text)
