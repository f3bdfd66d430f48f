"""Clients nobody here wrote: curl, fetchmail (keep and delete mode), and implicit TLS."""

from __future__ import annotations

import os
import poplib
import ssl
import subprocess

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThread
from twisted.protocols.tls import TLSMemoryBIOFactory

from tests.pop3.pop3_clients import fetchmail

MSG1 = b"From: a@example.test\r\nSubject: one\r\n\r\nfirst body\r\n.leading dot\r\nline 3\r\n"
MSG2 = b"From: b@example.test\r\nSubject: two\r\n\r\nsecond body\r\n"


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, timeout=60, **kwargs)


@pytest_twisted.ensureDeferred
async def test_curl_list_retr_top(pop3):
    host = await pop3()
    await host.deliver(MSG1)
    await host.deliver(MSG2)
    url = f"pop3://127.0.0.1:{host.port}"
    auth = ["-u", "alice@example.test:secret", "--max-time", "30", "-sS"]

    def session():
        listing = run(["curl", *auth, url + "/"])
        retr = run(["curl", *auth, url + "/1"])
        top = run(["curl", *auth, "-X", "TOP 2 0", url + "/"])
        uidl = run(["curl", *auth, "-X", "UIDL", url + "/"])
        return listing, retr, top, uidl

    listing, retr, top, uidl = await deferToThread(session)
    for result in (listing, retr, top, uidl):
        assert result.returncode == 0, result.stderr
    assert listing.stdout == b"1 %d\r\n2 %d\r\n" % (len(MSG1), len(MSG2))
    assert retr.stdout == MSG1  # curl undoes the stuffing itself
    assert top.stdout == b"From: b@example.test\r\nSubject: two\r\n\r\n"
    assert len(uidl.stdout.splitlines()) == 2
    # curl's RETR marked \Seen; curl never sends DELE, so everything is still there
    folder = await host.folder()
    assert len(folder.messages()) == 2


@pytest_twisted.ensureDeferred
async def test_fetchmail_keep_mode_fetches_each_message_once(pop3, tmp_path):
    host = await pop3()
    await host.deliver(MSG1)
    await host.deliver(MSG2)
    home = str(tmp_path / "fm-keep")
    os.makedirs(home)

    first = await deferToThread(fetchmail, home, host.port, True)
    assert first.returncode == 0, first.stderr
    with open(os.path.join(home, "out"), "rb") as f:
        got = f.read()
    # fetchmail hands the MDA LF line ends and adds its Received: line; the rest is exact.
    assert MSG1.replace(b"\r\n", b"\n") in got and MSG2.replace(b"\r\n", b"\n") in got
    second = await deferToThread(fetchmail, home, host.port, True)
    assert second.returncode == 1, second.stderr  # 1: no new mail
    with open(os.path.join(home, "out"), "rb") as f:
        assert f.read() == got
    folder = await host.folder()
    assert len(folder.messages()) == 2  # keep mode deleted nothing


@pytest_twisted.ensureDeferred
async def test_fetchmail_delete_mode_empties_the_maildrop(pop3, tmp_path):
    host = await pop3()
    await host.deliver(MSG1)
    await host.deliver(MSG2)
    home = str(tmp_path / "fm-delete")
    os.makedirs(home)

    result = await deferToThread(fetchmail, home, host.port, False)
    assert result.returncode == 0, result.stderr
    with open(os.path.join(home, "out"), "rb") as f:
        got = f.read()
    assert MSG1.replace(b"\r\n", b"\n") in got and MSG2.replace(b"\r\n", b"\n") in got
    folder = await host.folder()
    assert folder.messages() == []


@pytest_twisted.ensureDeferred
async def test_implicit_tls_listener(pop3):
    """Port 995 style: the same factory behind TLS offers USER without STLS."""
    host = await pop3(allow_plaintext="no", tls=True)
    await host.deliver(MSG1)
    wrapped = TLSMemoryBIOFactory(host.factory.tls_options, False, host.factory)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(wrapped)
    big = b"Subject: big\r\n\r\n" + b".dotted line of text\r\n" * 30000
    await host.deliver(big)

    def session():
        ctx = ssl.create_default_context(cafile=host.cafile)
        client = poplib.POP3_SSL("localhost", port.getHost().port, context=ctx, timeout=10)
        capa = client.capa()
        client.user("alice@example.test")
        client.pass_("secret")
        retr = client.retr(2)
        client.quit()
        return capa, retr

    try:
        capa, retr = await deferToThread(session)
    finally:
        await port.stopListening()
    assert "STLS" not in capa and "USER" in capa
    assert b"\r\n".join(retr[1]) + b"\r\n" == big
