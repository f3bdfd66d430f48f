"""``smtp.bare_newline``: what SMTP stores or queues never carries a bare CR or LF
(RFC 5321 §2.3.8; the SMTP smuggling pattern ``<CR>.<CR>`` of 2023), over real
sockets: normalised by default, or refused with Postfix's ``550 5.5.2`` and a close."""

from __future__ import annotations

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.smtp.conftest import RawClient

SMUGGLED = (b"Subject: s\r\n\r\nhi\r.\rMAIL FROM:<ceo@example.test>\r\n"
            b"RCPT TO:<bob@example.test>\r\nbare\nlf\r\n")


def no_bare(data: bytes) -> bool:
    rest = data.replace(b"\r\n", b"")
    return b"\r" not in rest and b"\n" not in rest


def envelope(c: RawClient) -> list[bytes]:
    return [c.cmd(b"EHLO c.test"), c.cmd(b"MAIL FROM:<s@far.test>"),
            c.cmd(b"RCPT TO:<alice@example.test>"), c.cmd(b"RCPT TO:<far@elsewhere.test>")]


@pytest_twisted.ensureDeferred
async def test_smuggling_pattern_in_data_is_normalised_for_store_and_queue(smtp_host):
    host = smtp_host(relay_networks=["127.0.0.1/32"])

    def session():
        c = RawClient(host.port)
        envelope(c)
        c.cmd(b"DATA")
        c.send(SMUGGLED + b".\r\n")
        return c.reply()

    assert (await deferToThread(session)).startswith(b"250 2.0.0")
    (stored,) = await host.read_messages()
    ((_, _, queued),) = host.queue.committed
    for data in (stored, queued):
        assert no_bare(data)
        assert data.endswith(b"hi\r\n.\r\nMAIL FROM:<ceo@example.test>\r\n"
                             b"RCPT TO:<bob@example.test>\r\nbare\r\nlf\r\n")


@pytest_twisted.ensureDeferred
async def test_bdat_is_normalised_across_chunks(smtp_host):
    host = smtp_host(relay_networks=["127.0.0.1/32"])

    def session():
        c = RawClient(host.port)
        envelope(c)
        out = []
        for chunk, last in ((b"Subject: b\r\n\r\nsplit\r", False), (b"\nx\r.\ry\r", True)):
            c.send(b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk)
            out.append(c.reply())
        return out

    first, last = await deferToThread(session)
    assert first.startswith(b"250") and last.startswith(b"250")
    (stored,) = await host.read_messages()
    assert stored.endswith(b"Subject: b\r\n\r\nsplit\r\nx\r\n.\r\ny\r\n")
    assert no_bare(host.queue.committed[0][2])


@pytest_twisted.ensureDeferred
async def test_reject_policy_refuses_the_smuggling_pattern_and_closes(smtp_host):
    host = smtp_host(relay_networks=["127.0.0.1/32"], bare_newline="reject")

    def session():
        c = RawClient(host.port)
        envelope(c)
        c.cmd(b"DATA")
        # A command pipelined behind the dot must never run.
        c.send(SMUGGLED + b".\r\nMAIL FROM:<x@far.test>\r\n")
        return c.reply(), c.closed()

    reply, closed = await deferToThread(session)
    assert reply == b"550 5.5.2 Error: bare <CR> received"
    assert closed
    assert await host.read_messages() == []
    assert host.queue.committed == [] and host.queue.writers[0].aborted


@pytest_twisted.ensureDeferred
async def test_reject_policy_in_bdat_allows_a_crlf_split_across_chunks(smtp_host):
    host = smtp_host(bare_newline="reject")

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c.test")
        out = []
        c.cmd(b"MAIL FROM:<s@far.test>")
        c.cmd(b"RCPT TO:<alice@example.test>")
        for chunk, last in ((b"Subject: ok\r\n\r\nsplit\r", False), (b"\nend\r\n", True)):
            c.send(b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk)
            out.append(c.reply())
        c.cmd(b"MAIL FROM:<s@far.test>")
        c.cmd(b"RCPT TO:<alice@example.test>")
        chunk = b"Subject: bad\r\n\r\nbare\nlf\r\n"
        c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
        out.append(c.reply())
        out.append(c.closed())
        return out

    first, last, refused, closed = await deferToThread(session)
    assert first.startswith(b"250") and last.startswith(b"250")
    assert refused == b"550 5.5.2 Error: bare <LF> received" and closed
    (stored,) = await host.read_messages()
    assert stored.endswith(b"Subject: ok\r\n\r\nsplit\r\nend\r\n")


@pytest_twisted.ensureDeferred
async def test_reject_policy_refuses_a_message_ending_in_a_bare_cr(smtp_host):
    host = smtp_host(bare_newline="reject")

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c.test")
        c.cmd(b"MAIL FROM:<s@far.test>")
        c.cmd(b"RCPT TO:<alice@example.test>")
        chunk = b"Subject: cr\r\n\r\nends in\r"
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        return c.reply()

    assert await deferToThread(session) == b"550 5.5.2 Error: bare <CR> received"
    assert await host.read_messages() == []
