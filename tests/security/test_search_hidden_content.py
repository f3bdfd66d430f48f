"""Content cannot hide from SEARCH behind the MIME parser's limits (issue 17, item 6).

Before the fix ``SEARCH BODY``/``TEXT`` found nothing past ``mime.MAX_PARTS`` (the
5,001st part of a wide multipart), below ``mime.MAX_DEPTH`` levels of nesting, or in
a 1,000-deep bomb: the scanner stopped recording there and the search only read the
text parts it had recorded. Now the unparsed rest is searched as flat text of the part
that holds it, as Dovecot does (Dovecot 2.3 finds all of these). Each search is also
bounded in time here (the bomb is scanned once, linearly) and the server's memory
stays flat.
"""

from __future__ import annotations

import imaplib
import time

import imapclient
import pytest

from mailhost.imap import mime
from tests.mailhost_process import MailHostProcess, rss_kib

A = "alice@example.test"
PW = "alice-pw"


def wide(n: int, secret: bytes) -> bytes:
    """A multipart/mixed with ``n`` small parts, then one that holds ``secret``."""
    parts = b"".join(b"--B\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i
                     for i in range(n))
    return (b"From: a@b.test\r\nSubject: wide\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=B\r\n\r\n" + parts
            + b"--B\r\nContent-Type: text/plain\r\n\r\n" + secret + b"\r\n--B--\r\n")


def nested(depth: int, inner: bytes, kind: str = "multipart") -> bytes:
    """``depth`` levels of multipart/mixed (or message/rfc822) around ``inner``.

    Boundaries have a fixed width, so none is a prefix of another (a prefix would
    match as a boundary, as in Dovecot, and close the levels early)."""
    body = inner
    for d in range(depth, 0, -1):
        if kind == "multipart":
            body = (b"Content-Type: multipart/mixed; boundary=b%05d\r\n\r\n--b%05d\r\n" % (d, d)
                    + body + b"\r\n--b%05d--\r\n" % d)
        else:
            body = b"Content-Type: message/rfc822\r\n\r\nSubject: level %d\r\n" % d + body
    return b"From: a@b.test\r\nSubject: nested\r\nMIME-Version: 1.0\r\n" + body


SECRETS = {
    b"widesecret": wide(mime.MAX_PARTS + 10, b"widesecret"),
    b"deepsecret": nested(mime.MAX_DEPTH + 20, b"Content-Type: text/plain\r\n\r\ndeepsecret\r\n"),
    b"bombsecret": nested(1000, b"Content-Type: text/plain\r\n\r\nbombsecret\r\n"),
    b"rfc822secret": nested(mime.MAX_DEPTH + 5, b"\r\nrfc822secret\r\n", kind="message"),
    b"plainsecret": b"From: a@b.test\r\nSubject: plain\r\n\r\nplainsecret\r\n",
}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = MailHostProcess(str(tmp_path_factory.mktemp("hidden")), users={A: PW})
    h.start()
    c = imaplib.IMAP4("127.0.0.1", h.ports["imap"], timeout=60)
    c.login(A, PW)
    for body in SECRETS.values():
        typ, _ = c.append("INBOX", None, None, body)
        assert typ == "OK"
    c.logout()
    yield h
    h.kill()


@pytest.mark.parametrize("key", ["BODY", "TEXT"])
def test_content_past_the_mime_limits_is_found(host, key):
    c = imaplib.IMAP4("127.0.0.1", host.ports["imap"], timeout=60)
    c.login(A, PW)
    c.select("INBOX", readonly=True)
    try:
        for n, secret in enumerate(SECRETS, 1):
            started = time.monotonic()
            typ, data = c.search(None, key, secret.decode())
            assert typ == "OK"
            assert data[0].split() == [b"%d" % n], (key, secret)
            assert time.monotonic() - started < 30, (key, secret)
        # Before the limits, parts are still searched as parsed parts: the 5,000th
        # part's own text, and nothing matches what is in no message.
        assert c.search(None, key, '"part 4000"')[1][0].split() == [b"1"]
        assert c.search(None, key, "nowhere")[1] == [b""]
    finally:
        c.logout()


def test_imapclient_finds_the_bomb_and_memory_stays_flat(host):
    before = rss_kib(host.pid)
    c = imapclient.IMAPClient("127.0.0.1", port=host.ports["imap"], ssl=False, timeout=60)
    try:
        c.login(A, PW)
        c.select_folder("INBOX", readonly=True)
        for _ in range(3):  # scanned once, then the structure comes from the cache
            assert c.search(["TEXT", "bombsecret"]) == [3]
            assert c.search(["BODY", "widesecret"]) == [1]
        # The structure the server renders is still the bounded one.
        structure = c.fetch([3], ["BODYSTRUCTURE"])[3][b"BODYSTRUCTURE"]
        assert structure is not None
    finally:
        c.logout()
    assert rss_kib(host.pid) - before < 30 * 1024


def test_the_overflow_offsets_survive_the_structure_cache():
    for body in SECRETS.values():
        part = mime.scan_bytes(body)
        again = mime.loads(mime.dumps(part))
        assert [p.overflow for p in again.walk()] == [p.overflow for p in part.walk()]
    assert mime.loads('[1,[]]') is None  # a structure cached before is scanned again
