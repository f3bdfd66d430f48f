"""BURL (RFC 4468) end to end on a host built by makeService (mailhost.testing): imaplib
APPENDs to Sent and GENURLAUTHs a ``submit+`` URL, smtplib submits it with BURL on the
submission listener, and the message arrives. Also BURL mixed with BDAT, the trusted
(no URLAUTH) own-mailbox case, and RFC 4468's errors."""

from __future__ import annotations

import imaplib
import re
import smtplib

import pytest_twisted
from twisted.internet import threads

from mailhost.testing import MailHost
from tests.imap.test_server_harness import raw

ALICE = ("alice@example.test", "secret")
BOB = ("bob@example.test", "hunter2")
SENT = (b"From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\n"
        b"Subject: sent by URL\r\nMessage-ID: <burl-1@example.test>\r\n\r\n"
        b"This body was never uploaded twice.\r\n")


def _imap_setup(port: int) -> dict[str, bytes]:
    """APPEND to Sent; GENURLAUTH URLs of it (and of its body) for the tests."""
    c = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    c.login(*ALICE)
    typ, data = c.append("Sent", None, None, SENT)
    assert typ == "OK", data
    m = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
    assert m, data
    validity, uid = m.groups()
    base = b"imap://alice%40example.test@localhost/Sent;UIDVALIDITY=" + validity \
        + b"/;UID=" + uid

    def gen(url: bytes) -> bytes:
        out = raw(c, b'G GENURLAUTH "' + url + b'" INTERNAL')
        assert out[-1].startswith(b"G OK") and out[0].startswith(b"* GENURLAUTH "), out
        return out[0][len(b"* GENURLAUTH "):].strip(b'"')

    urls = {
        "submit": gen(base + b";urlauth=submit+alice@example.test"),
        "body": gen(base + b"/;SECTION=TEXT;urlauth=submit+alice@example.test"),
        "header": gen(base + b"/;SECTION=HEADER;urlauth=submit+alice@example.test"),
        "for_bob": gen(base + b";urlauth=submit+bob@example.test"),
        "user": gen(base + b";urlauth=user+alice@example.test"),
        "authuser": gen(base + b";urlauth=authuser"),
        "plain": base,  # no URLAUTH: the trusted own-mailbox case
    }
    c.logout()
    return urls


def _bdat(s: smtplib.SMTP, data: bytes, last: bool = False) -> tuple[int, bytes]:
    s.putcmd("BDAT", f"{len(data)}{' LAST' if last else ''}")
    s.send(data)
    return s.getreply()


@pytest_twisted.ensureDeferred
async def test_burl_submits_a_message_fetched_by_urlauth_url():
    host = MailHost(users=dict([ALICE, BOB]), store="maildir")
    await host.start()
    try:
        urls = await threads.deferToThread(_imap_setup, host.imap_port)

        def submit() -> None:
            with smtplib.SMTP("127.0.0.1", host.submission_port, timeout=10) as s:
                s.ehlo("client.example.test")
                assert s.has_extn("burl") and s.esmtp_features["burl"] == "imap"
                # RFC 4468: BURL needs AUTH.
                code, text = s.docmd("BURL", urls["submit"].decode() + " LAST")
                assert code == 530 and text.startswith(b"5.7.0"), (code, text)
                s.login(*ALICE)
                code, text = s.docmd("BURL", urls["submit"].decode() + " LAST")
                assert code == 503, (code, text)  # no MAIL yet
                assert s.docmd("MAIL", "FROM:<alice@example.test>")[0] == 250
                assert s.docmd("RCPT", "TO:<bob@example.test>")[0] == 250
                code, text = s.docmd("BURL", urls["submit"].decode() + " LAST")
                assert code == 250 and b"queued" in text, (code, text)

        await threads.deferToThread(submit)
        (got,) = await host.wait_for_messages(1)
        assert got.user == "bob@example.test" and got.subject == "sent by URL"
        assert got.raw.endswith(SENT[SENT.index(b"\r\n\r\n"):])
        assert got["Message-ID"] == "<burl-1@example.test>"
    finally:
        await host.stop()


@pytest_twisted.ensureDeferred
async def test_burl_mixes_with_bdat_and_refuses_what_it_may_not_fetch():
    host = MailHost(users=dict([ALICE, BOB]), store="maildir")
    await host.start()
    try:
        urls = await threads.deferToThread(_imap_setup, host.imap_port)

        def submit() -> None:
            with smtplib.SMTP("127.0.0.1", host.submission_port, timeout=10) as s:
                s.login(*ALICE)
                # BDAT a new header, then BURL the stored body: one message (RFC 4468 3.2).
                s.docmd("MAIL", "FROM:<alice@example.test>")
                s.docmd("RCPT", "TO:<bob@example.test>")
                head = b"Subject: forwarded body\r\nTo: bob@example.test\r\n\r\n"
                assert _bdat(s, head)[0] == 250
                code, text = s.docmd("BURL", urls["body"].decode())
                assert code == 250 and b"octets received" in text, (code, text)
                # DATA after BURL is refused, as after BDAT.
                assert s.docmd("DATA")[0] == 503
                code, text = _bdat(s, b"-- sig\r\n", last=True)
                assert code == 250, (code, text)
                # URLs this user may not have: 554 5.6.6, and the transaction is gone.
                for name in ("for_bob", "user"):
                    s.docmd("MAIL", "FROM:<alice@example.test>")
                    s.docmd("RCPT", "TO:<bob@example.test>")
                    code, text = s.docmd("BURL", urls[name].decode() + " LAST")
                    assert code == 554 and text.startswith(b"5.6.6"), (name, code, text)
                    assert s.docmd("RCPT", "TO:<bob@example.test>")[0] == 503
                tampered = urls["submit"][:-4] + b"0000"
                s.docmd("MAIL", "FROM:<alice@example.test>")
                s.docmd("RCPT", "TO:<bob@example.test>")
                assert s.docmd("BURL", tampered.decode() + " LAST")[0] == 554
                # Syntax: RFC 4468 3.5.
                for arg in ("", "http://example.test/x", urls["submit"].decode() + " FIRST",
                            urls["submit"].decode() + " LAST x"):
                    code, text = s.docmd("BURL", arg)
                    assert code == 501 and text.startswith(b"5.5.4"), (arg, code, text)
                # authuser and the trusted own-mailbox URL work; header + body, LAST.
                s.docmd("MAIL", "FROM:<alice@example.test>")
                s.docmd("RCPT", "TO:<bob@example.test>")
                assert s.docmd("BURL", urls["header"].decode())[0] == 250
                code, text = s.docmd("BURL", urls["plain"].decode() + "/;SECTION=TEXT LAST")
                assert code == 250, (code, text)
                s.docmd("MAIL", "FROM:<alice@example.test>")
                s.docmd("RCPT", "TO:<bob@example.test>")
                assert s.docmd("BURL", urls["authuser"].decode() + " LAST")[0] == 250
            # Bob may use what Alice made for bob's submissions, not her own mailbox
            # without URLAUTH.
            with smtplib.SMTP("127.0.0.1", host.submission_port, timeout=10) as s:
                s.login(*BOB)
                s.docmd("MAIL", "FROM:<bob@example.test>")
                s.docmd("RCPT", "TO:<alice@example.test>")
                assert s.docmd("BURL", urls["plain"].decode() + " LAST")[0] == 554
                s.docmd("MAIL", "FROM:<bob@example.test>")
                s.docmd("RCPT", "TO:<alice@example.test>")
                assert s.docmd("BURL", urls["for_bob"].decode() + " LAST")[0] == 250
            # Port 25 offers no BURL.
            with smtplib.SMTP("127.0.0.1", host.smtp_port, timeout=10) as s:
                s.ehlo("client.example.test")
                assert not s.has_extn("burl")
                assert s.docmd("BURL", urls["submit"].decode() + " LAST")[0] == 502

        await threads.deferToThread(submit)
        got = await host.wait_for_messages(4)
        by_subject = {m.subject: m for m in got}
        mixed = by_subject["forwarded body"]
        assert mixed.raw.endswith(b"\r\n\r\nThis body was never uploaded twice.\r\n-- sig\r\n")
        assert [m.user for m in got].count("alice@example.test") == 1
        assert sum(1 for m in got if m.subject == "sent by URL") == 3
    finally:
        await host.stop()


def test_protocols_share_url_resolution_only_through_urlfetch():
    """DESIGN.md: protocols don't import each other; BURL reaches URLAUTH through
    ``mailhost.urlfetch``, which imports no protocol."""
    from tests.message.test_layering import imports, modules

    for path in modules("smtp"):
        assert not any(m.startswith(("mailhost.imap", "mailhost.pop3")) for m in imports(path)), path
    for path in modules("urlfetch"):
        assert not any(m.startswith(("mailhost.imap", "mailhost.smtp", "mailhost.pop3",
                                     "mailhost.service")) for m in imports(path)), path


def test_burl_command_syntax():
    """RFC 4468 3.5: burl-cmd = "BURL" SP absolute-URI [SP end-marker]."""
    import pytest

    from mailhost.smtp import burl
    from mailhost.smtp.reply import Reply

    assert burl.parse("imap://a@h/INBOX/;UID=1") == ("imap://a@h/INBOX/;UID=1", False)
    assert burl.parse("IMAP://a@h/INBOX/;UID=1 last") == ("IMAP://a@h/INBOX/;UID=1", True)
    for arg in ("", " LAST", "mailto:x@y", "imap://a@h/x LAST more", "imap://a@h/x END"):
        with pytest.raises(Reply) as e:
            burl.parse(arg)
        assert e.value.code == 501, arg
    assert burl.ehlo_keyword(object(), submission=True) == "BURL imap"  # type: ignore[arg-type]
    assert burl.ehlo_keyword(None, submission=True) is None
    assert burl.ehlo_keyword(object(), submission=False) is None  # type: ignore[arg-type]
