"""PREVIEW (RFC 8970) over a real socket: plain, HTML, encoded, quoted text, attachments
only, LAZY, and a large message whose preview reads only its first octets."""

from __future__ import annotations

import base64

import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from imapclient import IMAPClient

from mailhost.imap import mime
from mailhost.imap.preview import MAX_CHARS, make_preview, text_part
from tests.imap.test_server_harness import imap_host_fixture, raw  # noqa: F401

PLAIN = (b"From: a@example.test\r\nSubject: plain\r\n\r\n"
         b"Hello Alice,\r\n\r\n> what you wrote\r\n> before\r\nsee   you  at\r\nnoon.\r\n"
         b"-- \r\nBob, signature\r\n")
HTML = (b"From: a@example.test\r\nSubject: html\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n"
        b"\r\n<html><head><style>p{}</style><script>alert(1)</script></head>"
        b"<body><p>Caf=C3=A9 <b>au</b> lait&amp;cr=C3=A8me</p></body></html>\r\n")
ALTERNATIVE = (b"From: a@example.test\r\nSubject: alt\r\nMIME-Version: 1.0\r\n"
               b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
               b"--b1\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\n"
               + base64.encodebytes("Grüße aus Köln".encode("latin-1")).replace(b"\n", b"\r\n")
               + b"--b1\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment\r\n\r\n"
               b"%PDF\r\n--b1--\r\n")
ONLY_ATTACHMENT = (b"From: a@example.test\r\nSubject: att\r\nMIME-Version: 1.0\r\n"
                   b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
                   b"--b1\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; "
                   b"filename=a.txt\r\n\r\nnot a preview\r\n--b1--\r\n")


@pytest_twisted.ensureDeferred
async def test_previews_over_imap(imap_host):
    host = await imap_host(kind="maildir")
    for m in (PLAIN, HTML, ALTERNATIVE, ONLY_ATTACHMENT):
        await host.deliver(m)
    big = (b"From: a@example.test\r\nSubject: big\r\n\r\n" + b"Start of a long one. "
           + b"x" * 60 + b"\r\n" + (b"y" * 998 + b"\r\n") * 20_000)
    await host.deliver(big)

    def run():
        with IMAPClient("127.0.0.1", port=host.port, ssl=False, timeout=10) as c:
            c.login("alice@example.test", "secret")
            assert b"PREVIEW" in c.capabilities()
            c.select_folder("INBOX", readonly=True)
            got = c.fetch([1, 2, 3, 4, 5], ["PREVIEW"])
            previews = {n: got[n][b"PREVIEW"] for n in got}
        assert previews[1] == b"Hello Alice, see you at noon."
        assert previews[2].decode() == "Café au lait&crème"
        assert previews[3].decode() == "Grüße aus Köln"
        assert previews[4] == b""
        assert previews[5].startswith(b"Start of a long one. ") and len(previews[5]) == MAX_CHARS

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_lazy_answers_nil_first_then_the_preview(imap_host):
    host = await imap_host(kind="maildir")
    await host.deliver(PLAIN)

    def run():
        c = host.client()
        c.select("INBOX")
        first = raw(c, b"L FETCH 1 (PREVIEW (LAZY))")
        assert first[0] == b"* 1 FETCH (PREVIEW NIL)", first
        for _ in range(50):  # made in the background; bounded wait
            again = raw(c, b"M FETCH 1 (PREVIEW (LAZY))")
            if again[0] != b"* 1 FETCH (PREVIEW NIL)":
                break
        assert again[0] == b'* 1 FETCH (PREVIEW "Hello Alice, see you at noon.")'
        assert raw(c, b"B FETCH 1 (PREVIEW (FOO))")[-1].startswith(b"B BAD")
        assert raw(c, b"F FETCH 1 (UID PREVIEW FLAGS)")[0].startswith(b'* 1 FETCH (UID 1 PREVIEW "Hello')
        c.logout()

    await host.in_thread(run)


@settings(max_examples=200, deadline=None)
@given(body=st.text(max_size=3000), cte=st.sampled_from(["7bit", "base64", "quoted-printable"]))
def test_a_preview_is_short_single_line_text(body, cte):
    import email.charset  # noqa: F401
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["Subject"] = "x"
    msg.set_content(body, cte=cte if cte != "7bit" else "8bit")
    raw_msg = msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    struct = mime.scan_bytes(raw_msg)
    part = text_part(struct)
    assert part is not None
    text = make_preview(raw_msg[part.body_start:part.body_end], part)
    assert len(text) <= MAX_CHARS
    assert "\n" not in text and "\r" not in text and text == text.strip()
