"""URLAUTH (RFC 4467) and URL-PARTIAL (RFC 5550) over a real socket: the RFC's
GENURLAUTH/URLFETCH example, access identifiers, a tampered or expired URL, RESETKEY of
one mailbox and of all, keys that survive a restart and a RENAME (0600 files), and
;PARTIAL= ranges."""

from __future__ import annotations

import os
import re
import stat

import pytest_twisted

from mailhost.store.maildir import MaildirStore
from mailhost.urlfetch import keys as urlauth_keys
from tests.imap.test_server_harness import imap_host_fixture, raw  # noqa: F401

MSG = (b"From: a@example.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
       b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
       b"--b1\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
       b"--b1\r\nContent-Type: text/plain\r\n\r\nsecond part text\r\n--b1--\r\n")
URL = "imap://alice%40example.test@mail.example.test/INBOX/;uid=1/;section=2"
SIGNED = re.compile(rb'\* GENURLAUTH "?([^"\r\n]+)"?')


def gen(c, tag: bytes, url: str, mech: bytes = b"INTERNAL") -> bytes | list[bytes]:
    out = raw(c, tag + b' GENURLAUTH "' + url.encode() + b'" ' + mech)
    if not out[-1].startswith(tag + b" OK"):
        return out
    m = SIGNED.match(out[0])
    assert m, out
    return m.group(1)


def fetch(c, tag: bytes, url: bytes) -> bytes | None:
    out = raw(c, tag + b' URLFETCH "' + url + b'"')
    assert out[-1].startswith(tag + b" OK"), out
    head = b'* URLFETCH "' + url + b'" '
    if out[0] == head + b"NIL":
        return None
    m = re.match(rb"\{(\d+)\}$", out[0][len(head):])
    assert out[0].startswith(head) and m, out
    n = int(m.group(1))
    data = b"\r\n".join(out[1:-1])
    assert len(data) == n, (data, n)
    return data


@pytest_twisted.ensureDeferred
async def test_urlauth(imap_host, tmp_path):
    keydir = str(tmp_path / "keys")
    host = await imap_host(kind="maildir", urlauth_dir=keydir)
    await host.deliver(MSG)
    await host.deliver(MSG, user="bob@example.test")

    def run():
        c = host.client(login=False)
        assert b"URLAUTH" not in raw(c, b"C0 CAPABILITY")[0].split()
        c.login("alice@example.test", "secret")
        caps = raw(c, b"C1 CAPABILITY")[0].split()
        assert b"URLAUTH" in caps and b"URL-PARTIAL" in caps
        # RFC 4467 section 4's example: GENURLAUTH, then URLFETCH of what it gave.
        signed = gen(c, b"a001", URL + ";urlauth=anonymous")
        assert re.fullmatch(re.escape(URL.encode()) + rb";urlauth=anonymous:INTERNAL:[0-9a-f]{64}",
                            signed), signed
        assert fetch(c, b"a002", signed) == b"second part text"
        # URL-PARTIAL (RFC 5550): a range of the part.
        part = gen(c, b"a003", URL + "/;PARTIAL=7.4;urlauth=authuser")
        assert fetch(c, b"a004", part) == b"part"
        assert fetch(c, b"a005", gen(c, b"a006", URL + "/;PARTIAL=7;urlauth=authuser")) == \
            b"part text"
        # Tampered, unsigned, another access, another user's access.
        assert fetch(c, b"t1", signed[:-1] + (b"0" if signed[-1:] != b"0" else b"1")) is None
        assert fetch(c, b"t2", signed.replace(b"section=2", b"section=1")) is None
        assert fetch(c, b"t3", URL.encode() + b";urlauth=anonymous") is None
        assert fetch(c, b"t4", gen(c, b"g1", URL + ";urlauth=user+bob@example.test")) is None
        assert fetch(c, b"t5", gen(c, b"g2", URL + ";urlauth=user+alice@example.test")) == \
            b"second part text"
        assert fetch(c, b"t6", gen(c, b"g3", URL + ";urlauth=submit+alice@example.test")) is None
        # GENURLAUTH refuses with BAD (RFC 4467 7): relative, another user's, no
        # ;URLAUTH=, expired, unknown mechanism, no such mailbox.
        for tag, url in ((b"n1", "/INBOX/;uid=1;urlauth=anonymous"),
                         (b"n2", URL.replace("alice", "bob") + ";urlauth=anonymous"),
                         (b"n3", URL),
                         (b"n4", URL + ";EXPIRE=2001-01-01T00:00:00Z;urlauth=anonymous")):
            out = gen(c, tag, url)
            assert isinstance(out, list) and out[-1].startswith(tag + b" BAD"), out
        out = gen(c, b"n5", URL + ";urlauth=anonymous", mech=b"XSHA")
        assert out[-1].startswith(b"n5 BAD"), out
        out = gen(c, b"n6", URL.replace("INBOX", "Nope") + ";urlauth=anonymous")
        assert out[-1].startswith(b"n6 BAD [NONEXISTENT]"), out
        assert raw(c, b"b1 GENURLAUTH")[-1].startswith(b"b1 BAD")
        assert raw(c, b"b2 URLFETCH")[-1].startswith(b"b2 BAD")
        # EXPIRE in the future works.
        later = gen(c, b"e1", URL + ";EXPIRE=2999-01-01T00:00:00Z;urlauth=anonymous")
        assert fetch(c, b"e2", later) == b"second part text"
        # A URL names its mailbox: after a RENAME it names nothing (RFC 4467 3).
        assert raw(c, b"r0 CREATE Work")[-1].startswith(b"r0 OK")
        c.select("INBOX")
        c.uid("COPY", "1", "Work")
        work = gen(c, b"r1", URL.replace("INBOX", "Work") + ";urlauth=anonymous")
        assert fetch(c, b"r2", work) == b"second part text"
        assert raw(c, b"r3 RENAME Work Job")[-1].startswith(b"r3 OK")
        assert fetch(c, b"r4", work) is None
        job = gen(c, b"r5", URL.replace("INBOX", "Job") + ";urlauth=anonymous")
        # RESETKEY of INBOX voids INBOX's URLs, not Job's; RESETKEY alone voids all.
        assert raw(c, b"k1 RESETKEY INBOX INTERNAL")[-1].startswith(b"k1 OK")
        assert fetch(c, b"k2", signed) is None
        assert fetch(c, b"k3", job) == b"second part text"
        fresh = gen(c, b"k4", URL + ";urlauth=anonymous")
        assert fresh != signed and fetch(c, b"k5", fresh) == b"second part text"
        assert raw(c, b"k6 RESETKEY Nope")[-1].startswith(b"k6 NO")
        assert raw(c, b"k7 RESETKEY INBOX XSHA")[-1].startswith(b"k7 BAD")
        assert raw(c, b"k8 RESETKEY")[-1].startswith(b"k8 OK")
        assert fetch(c, b"k9", fresh) is None
        final = gen(c, b"k10", URL + ";urlauth=anonymous")
        c.logout()
        # Bob cannot fetch Alice's URLs here: this listener has no store-wide fetcher
        # (a session reaches only its own account; test_urlauth_rfc4467 has one).
        b = host.client(login=False)
        b.login("bob@example.test", "hunter2")
        assert fetch(b, b"x1", final) is None
        b.logout()
        return final

    final = await host.in_thread(run)
    files = os.listdir(keydir)
    assert len(files) == 1 and files[0].endswith(".json")
    assert stat.S_IMODE(os.stat(keydir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(keydir, files[0])).st_mode) == 0o600
    # A restart: a new store and key cache, the same files.
    await host.store.close()
    urlauth_keys._instances.clear()
    again = await imap_host(store=MaildirStore(host.store.root, fsync=False),
                            urlauth_dir=keydir)

    def after():
        c = again.client()
        assert fetch(c, b"z1", final) == b"second part text"
        c.logout()

    await again.in_thread(after)
