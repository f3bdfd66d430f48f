"""An audit of URLAUTH (RFC 4467), IMAP URLs (RFC 5092) and URL-PARTIAL (RFC 5550)
against the RFC texts, section by section, over a real socket (imaplib), with the
store-wide URL fetcher service.py gives the IMAP listener:

- 2.3 access identifiers: ``anonymous``, ``authuser``, ``user+<id>`` fetched by
  another user's session; ``submit+`` never by an IMAP session;
- 7 GENURLAUTH: several URL/mechanism pairs in one command; tagged BAD for a URL it
  cannot sign (already signed, unknown access identifier, missing ``user+`` id);
- 7 URLFETCH: "executes with the access of the userid in the server component of the
  URL"; NIL for a whole-mailbox URL, an expired one, a tampered one, an unknown user
  (whose account is not created); several URLs at once; no mailbox selected;
- 8 URLMECH: RESETKEY's tagged OK and SELECT/EXAMINE carry ``[URLMECH INTERNAL]``;
- RFC 5092 6: ``;UIDVALIDITY=`` that no longer matches names nothing;
- RFC 5550 / 5092 ``;PARTIAL=``: a range past the end is empty.
"""

from __future__ import annotations

import os
import re

import pytest_twisted

from tests.imap.test_server_harness import imap_host_fixture, raw  # noqa: F401

MSG = (b"From: a@example.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
       b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
       b"--b1\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
       b"--b1\r\nContent-Type: text/plain\r\n\r\nsecond part text\r\n--b1--\r\n")
ALICE_URL = "imap://alice%40example.test@mail.example.test/INBOX/;uid=1/;section=2"
SIGNED = re.compile(rb'"?(imap://[^" ]+)"?')


def _signed(c, tag: bytes, *urls: str) -> list[bytes]:
    line = tag + b" GENURLAUTH " + b" ".join(b'"%s" INTERNAL' % u.encode() for u in urls)
    out = raw(c, line)
    assert out[-1].startswith(tag + b" OK"), out
    assert len(out) == 2 and out[0].startswith(b"* GENURLAUTH "), out
    return SIGNED.findall(out[0][len(b"* GENURLAUTH "):])


def _fetch(c, tag: bytes, *urls: bytes) -> list[bytes | None]:
    out = raw(c, tag + b" URLFETCH " + b" ".join(b'"%s"' % u for u in urls))
    assert out[-1].startswith(tag + b" OK"), out
    text = b"\r\n".join(out[:-1]) + b"\r\n"
    got: list[bytes | None] = []
    for url in urls:
        head = b'* URLFETCH "' + url + b'" '
        at = text.index(head) + len(head)
        if text.startswith(b"NIL", at):
            got.append(None)
            continue
        m = re.match(rb"\{(\d+)\}\r\n", text[at:])
        assert m, text[at:at + 40]
        start = at + m.end()
        got.append(text[start:start + int(m.group(1))])
    return got


@pytest_twisted.ensureDeferred
async def test_rfc4467_urlfetch_runs_with_the_access_of_the_urls_owner(imap_host, tmp_path):
    host = await imap_host(kind="maildir", url_fetcher=True, urlauth_dir=str(tmp_path / "keys"))
    await host.deliver(MSG)

    def run():
        a = host.client()
        # 7: several pairs, one * GENURLAUTH carrying them all, in order.
        anon, auth, for_bob, for_alice, submit = _signed(
            a, b"g1", ALICE_URL + ";urlauth=anonymous", ALICE_URL + ";urlauth=authuser",
            ALICE_URL + ";urlauth=user+bob@example.test",
            ALICE_URL + ";urlauth=user+alice@example.test",
            ALICE_URL + ";urlauth=submit+alice@example.test")
        assert anon.startswith(ALICE_URL.encode() + b";urlauth=anonymous:INTERNAL:")
        a.logout()
        # 2.3 / 7: Bob's session fetches what Alice made for anyone, any user, or him.
        b = host.client(login=False)
        b.login("bob@example.test", "hunter2")
        assert _fetch(b, b"f1", anon, auth, for_bob, for_alice, submit) == [
            b"second part text", b"second part text", b"second part text", None, None]
        b.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_rfc4467_genurlauth_bad_and_urlfetch_nil_cases(imap_host, tmp_path):
    keys = tmp_path / "keys"
    host = await imap_host(kind="maildir", url_fetcher=True, urlauth_dir=str(keys))
    await host.deliver(MSG)

    def run():
        c = host.client()
        # 7 GENURLAUTH: "If any of the above checks fail, the server MUST return a
        # tagged BAD response".
        (signed,) = _signed(c, b"g0", ALICE_URL + ";urlauth=anonymous")
        for n, url in enumerate((signed.decode(),  # a full URL is no rump
                                 ALICE_URL + ";urlauth=friends",  # no such access id
                                 ALICE_URL + ";urlauth=user+",  # user+ without a user
                                 ALICE_URL.replace("uid=1/", "uid=1") + ";urlauth=anonymous")):
            tag = b"b%d" % n
            out = raw(c, tag + b' GENURLAUTH "' + url.encode() + b'" INTERNAL')
            assert out[-1].startswith(tag + b" BAD") and len(out) == 1, (url, out)
        # 7 URLFETCH: NIL for a whole mailbox, an expired URL, another token, a user
        # who does not exist (and no account is made for that name).
        later = _signed(c, b"g1", ALICE_URL + ";EXPIRE=2999-01-01T00:00:00Z;urlauth=authuser")[0]
        whole = b"imap://alice%40example.test@mail.example.test/INBOX;urlauth=anonymous" \
                b":INTERNAL:" + b"0" * 64
        expired = later.replace(b"2999", b"2001")
        ghost = signed.replace(b"alice%40", b"nosuch%40")
        tampered = signed[:-4] + b"abcd"
        got = _fetch(c, b"f1", later, whole, expired, ghost, tampered, signed)
        assert got == [b"second part text", None, None, None, None, b"second part text"]
        assert not os.path.exists(os.path.join(host.store.root, "example.test", "nosuch"))
        # RFC 5092 6: a UIDVALIDITY that does not match names nothing.
        validity = c.status("INBOX", "(UIDVALIDITY)")[1][0]
        v = int(re.search(rb"UIDVALIDITY (\d+)", validity).group(1))
        good, bad = _signed(
            c, b"g2", ALICE_URL.replace("INBOX/", f"INBOX;UIDVALIDITY={v}/") + ";urlauth=authuser",
            ALICE_URL.replace("INBOX/", f"INBOX;UIDVALIDITY={v + 1}/") + ";urlauth=authuser")
        assert _fetch(c, b"f2", good, bad) == [b"second part text", None]
        # RFC 5550: ;PARTIAL= past the end is an empty string, within it a range.
        past, inside = _signed(c, b"g3", ALICE_URL + "/;PARTIAL=100.5;urlauth=authuser",
                               ALICE_URL + "/;PARTIAL=0.6;urlauth=authuser")
        assert _fetch(c, b"f3", past, inside) == [b"", b"second"]
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_rfc4467_urlmech_on_resetkey_and_select(imap_host, tmp_path):
    host = await imap_host(kind="maildir", url_fetcher=True, urlauth_dir=str(tmp_path / "k"))
    await host.deliver(MSG)

    def run():
        c = host.client()
        out = raw(c, b"s SELECT INBOX")
        assert b"* OK [URLMECH INTERNAL] URLAUTH mechanisms" in out, out
        out = raw(c, b"x EXAMINE INBOX")
        assert b"* OK [URLMECH INTERNAL] URLAUTH mechanisms" in out, out
        assert raw(c, b"r1 RESETKEY INBOX")[-1].startswith(b"r1 OK [URLMECH INTERNAL]")
        assert raw(c, b"r2 RESETKEY")[-1].startswith(b"r2 OK [URLMECH INTERNAL]")
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_fetcher_implements_its_interfaces(imap_host, tmp_path):
    from zope.interface.verify import verifyObject

    from mailhost.imap.catenate import open_url
    from mailhost.urlfetch import IMAP_SESSION, IFetchedPart, IUrlFetcher
    from mailhost.urlfetch.fetcher import UrlAuthFetcher

    host = await imap_host(kind="maildir", url_fetcher=True, urlauth_dir=str(tmp_path / "k"))
    await host.deliver(MSG)
    fetcher = UrlAuthFetcher(host.store.open_account, str(tmp_path / "k"), open_url)
    verifyObject(IUrlFetcher, fetcher)
    c = await host.in_thread(host.client)
    (signed,) = await host.in_thread(_signed, c, b"g", ALICE_URL + ";urlauth=authuser")
    await host.in_thread(c.logout)
    part = await fetcher.fetch(signed.decode(), "bob@example.test", IMAP_SESSION)
    verifyObject(IFetchedPart, part)
    data = b""
    while chunk := await part.read():
        data += chunk
    part.close()
    assert data == b"second part text" and part.size == len(data)
