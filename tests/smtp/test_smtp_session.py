"""The inbound ESMTP listener over real loopback sockets, with smtplib and a raw client."""

from __future__ import annotations

import smtplib
import socket
import time

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.smtp.conftest import RawClient

MSG = b"From: x@remote.test\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nHello\r\n.dot line\r\n"


@pytest_twisted.ensureDeferred
async def test_smtplib_end_to_end(smtp_host):
    host = smtp_host()

    def session():
        with smtplib.SMTP("127.0.0.1", host.port, timeout=10) as s:
            code, ehlo = s.ehlo("client.test")
            refused = s.sendmail("x@remote.test", ["alice@example.test"], MSG)
            return code, ehlo, refused

    code, ehlo, refused = await deferToThread(session)
    assert code == 250
    for ext in (b"PIPELINING", b"SIZE 33554432", b"8BITMIME", b"SMTPUTF8", b"DSN",
                b"ENHANCEDSTATUSCODES", b"AUTH PLAIN LOGIN"):
        assert ext in ehlo
    assert b"STARTTLS" not in ehlo  # no TLS options on this listener
    assert refused == {}
    (stored,) = await host.read_messages()
    assert stored.startswith(b"Return-Path: <x@remote.test>\r\nReceived: from client.test ([127.0.0.1])")
    assert b"by mx.example.test (mailhost) with ESMTP id " in stored
    assert b"for <alice@example.test>;" in stored
    # dot-unstuffing: smtplib stuffed ".dot line", we must store it unstuffed
    assert stored.endswith(MSG)


@pytest_twisted.ensureDeferred
async def test_greeting_and_basic_commands(smtp_host):
    host = smtp_host()

    def session():
        c = RawClient(host.port)
        out = [c.greeting]
        for cmd in (b"NOOP", b"HELO client.test", b"VRFY alice", b"EXPN staff", b"HELP",
                    b"RSET", b"FOO bar", b"MAIL TO:<x@y>", b"RCPT TO:<alice@example.test>",
                    b"DATA", b"QUIT"):
            out.append(c.cmd(cmd))
        out.append(c.closed())
        return out

    (greet, noop, helo, vrfy, expn, helpr, rset, unknown, badmail, rcpt_first, data_first,
     quit_, closed) = await deferToThread(session)
    assert greet == b"220 mx.example.test ESMTP mailhost"
    assert noop.startswith(b"250 2.0.0")
    assert helo == b"250 mx.example.test"
    assert vrfy.startswith(b"252 2.5.2")
    assert expn.startswith(b"502 5.5.1")
    assert helpr.startswith(b"214")
    assert rset.startswith(b"250 2.0.0")
    assert unknown.startswith(b"500 5.5.1")
    assert badmail.startswith(b"501 5.5.4")
    assert rcpt_first.startswith(b"503 5.5.1")
    assert data_first.startswith(b"503 5.5.1")
    assert quit_.startswith(b"221 2.0.0")
    assert closed


@pytest_twisted.ensureDeferred
async def test_mail_before_helo_and_nested_mail(smtp_host):
    host = smtp_host()

    def session():
        c = RawClient(host.port)
        return [c.cmd(b"MAIL FROM:<a@remote.test>"), c.cmd(b"EHLO c"),
                c.cmd(b"MAIL FROM:<a@remote.test>"), c.cmd(b"MAIL FROM:<a@remote.test>"),
                c.cmd(b"MAIL FROM:<a@remote.test> FOO=bar"), c.cmd(b"HELO c"),
                c.cmd(b"MAIL FROM:<a@remote.test> BODY=8BITMIME")]

    r = await deferToThread(session)
    assert r[0].startswith(b"503 5.5.1")
    assert r[2].startswith(b"250 2.1.0")
    assert r[3].startswith(b"503 5.5.1")  # nested
    assert r[4].startswith(b"503 5.5.1")  # still nested
    assert r[6].startswith(b"555 5.5.4")  # ESMTP params after plain HELO


@pytest_twisted.ensureDeferred
async def test_per_recipient_decisions_in_one_session(smtp_host):
    host = smtp_host()

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        c.cmd(b"MAIL FROM:<sender@remote.test>")
        replies = [c.cmd(b"RCPT TO:<%s>" % a) for a in (
            b"alice@example.test", b"nobody@example.test", b"someone@elsewhere.test",
            b"bob@EXAMPLE.TEST", b"postmaster")]
        data = c.cmd(b"DATA")
        c.send(b"Subject: t\r\n\r\nbody\r\n.\r\n")
        return replies, data, c.reply()

    replies, data, final = await deferToThread(session)
    assert replies[0].startswith(b"250 2.1.5")
    assert replies[1] == (b"550 5.1.1 <nobody@example.test>: Recipient address rejected: "
                          b"User unknown")
    assert replies[2] == b"554 5.7.1 <someone@elsewhere.test>: Relay access denied"
    assert replies[3].startswith(b"250 2.1.5")
    # bare <postmaster> is accepted: with no postmaster user it goes to the first user
    # (RFC 5321 4.5.1; tests/security/test_postmaster.py)
    assert replies[4].startswith(b"250 2.1.5")
    assert data.startswith(b"354")
    assert final.startswith(b"250 2.0.0 Ok: queued as ")
    assert len(await host.read_messages("alice@example.test")) == 1
    bob = await host.read_messages("bob@example.test")
    assert len(bob) == 1 and b"\tfor <" not in bob[0]  # two recipients: no "for" clause
    assert host.queue.committed == []


@pytest_twisted.ensureDeferred
async def test_relay_tricks_refused(smtp_host):
    host = smtp_host()
    tricks = [b"<user%elsewhere.test@example.test>", b'<"user@elsewhere.test"@example.test>',
              b"<@example.test:user@elsewhere.test>", b"<elsewhere.test!user@example.test>",
              b"<@example.test,@example.org:user@elsewhere.test>", b"<user@[127.0.0.1]>",
              b'<"alice@elsewhere.test"@example.test>', b"<alice%elsewhere.test@example.org>"]

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        c.cmd(b"MAIL FROM:<s@remote.test>")
        out = [c.cmd(b"RCPT TO:" + t) for t in tricks]
        out.append(c.cmd(b"DATA"))
        return out

    *replies, data = await deferToThread(session)
    for trick, reply in zip(tricks, replies, strict=True):
        assert reply[:3] in (b"550", b"554"), (trick, reply)
    assert replies[2].startswith(b"554 5.7.1 <user@elsewhere.test>")  # route stripped
    assert data.startswith(b"554 5.5.1")
    assert host.queue.writers == []


@pytest_twisted.ensureDeferred
async def test_relay_network_may_relay(smtp_host):
    host = smtp_host(relay_networks=["127.0.0.0/8"])

    def session():
        with smtplib.SMTP("127.0.0.1", host.port, timeout=10) as s:
            return s.sendmail("a@example.test", ["far@elsewhere.test", "alice@example.test"],
                              b"Subject: x\r\n\r\nbody\r\n")

    assert await deferToThread(session) == {}
    (sender, rcpts, data), = host.queue.committed
    assert sender == "a@example.test"
    assert [r.address for r in rcpts] == ["far@elsewhere.test"]
    assert data.startswith(b"Received: ") and b"Return-Path" not in data
    assert len(await host.read_messages()) == 1


@pytest_twisted.ensureDeferred
async def test_no_queue_means_no_relay(smtp_host):
    host = smtp_host(queue=False, relay_networks=["127.0.0.0/8"])

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        c.cmd(b"MAIL FROM:<s@remote.test>")
        return c.cmd(b"RCPT TO:<far@elsewhere.test>")

    assert (await deferToThread(session)).startswith(b"554 5.7.1")


@pytest_twisted.ensureDeferred
async def test_alias_expansion_and_dedupe(smtp_host):
    host = smtp_host()

    def session():
        with smtplib.SMTP("127.0.0.1", host.port, timeout=10) as s:
            return s.sendmail("s@remote.test", ["info@example.test", "team@example.test",
                                                "Alice@example.test", "alice+tag@example.test"],
                              b"Subject: a\r\n\r\nx\r\n")

    assert await deferToThread(session) == {}
    assert len(await host.read_messages("alice@example.test")) == 1
    assert len(await host.read_messages("bob@example.test")) == 1


@pytest_twisted.ensureDeferred
async def test_pipelined_replies_in_order(smtp_host):
    host = smtp_host()
    batch = (b"EHLO c\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
             b"RCPT TO:<ghost@example.test>\r\nRCPT TO:<x@elsewhere.test>\r\n"
             b"RCPT TO:<bob@example.test>\r\nDATA\r\n")

    def session():
        c = RawClient(host.port)
        c.send(batch)
        replies = [c.reply() for _ in range(7)]
        # body, end of data and the next transaction, all in one write
        c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nMAIL FROM:<t@remote.test>\r\n"
               b"RCPT TO:<carol@example.test>\r\nDATA\r\n")
        replies += [c.reply() for _ in range(4)]
        c.send(b"second\r\n.\r\nQUIT\r\n")
        replies += [c.reply(), c.reply()]
        return replies

    r = await deferToThread(session)
    codes = [x[:3] for x in r]
    assert codes == [b"250", b"250", b"250", b"550", b"554", b"250", b"354",
                     b"250", b"250", b"250", b"354", b"250", b"221"]
    assert len(await host.read_messages("carol@example.test")) == 1
    assert len(await host.read_messages("bob@example.test")) == 1


@pytest_twisted.ensureDeferred
async def test_size_at_mail_and_during_data(smtp_host):
    host = smtp_host(max_message_size=10_000)

    def session():
        c = RawClient(host.port)
        ehlo = c.cmd(b"EHLO c")
        too_big = c.cmd(b"MAIL FROM:<s@remote.test> SIZE=10001")
        ok = c.cmd(b"MAIL FROM:<s@remote.test> SIZE=100")
        c.cmd(b"RCPT TO:<alice@example.test>")
        c.cmd(b"DATA")
        c.send(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 50 + b".\r\n")
        over = c.reply()
        # the session stays usable
        again = [c.cmd(b"MAIL FROM:<s@remote.test>"), c.cmd(b"RCPT TO:<alice@example.test>"),
                 c.cmd(b"DATA")]
        c.send(b"Subject: small\r\n\r\nok\r\n.\r\n")
        again.append(c.reply())
        return ehlo, too_big, ok, over, again

    ehlo, too_big, ok, over, again = await deferToThread(session)
    assert b"SIZE 10000" in ehlo
    assert too_big == b"552 5.3.4 Message size exceeds fixed limit"
    assert ok.startswith(b"250")
    assert over == b"552 5.3.4 Message size exceeds fixed limit"
    assert [a[:3] for a in again] == [b"250", b"250", b"354", b"250"]
    (stored,) = await host.read_messages()
    assert b"Subject: small" in stored


@pytest_twisted.ensureDeferred
async def test_long_data_line_does_not_fall_into_command_mode(smtp_host):
    host = smtp_host(max_line_length=1000)

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        c.cmd(b"MAIL FROM:<s@remote.test>")
        c.cmd(b"RCPT TO:<alice@example.test>")
        c.cmd(b"DATA")
        c.send(b"Subject: long\r\n\r\n" + b"y" * 5000 + b"\r\nMAIL FROM:<evil@remote.test>\r\n"
               b"RCPT TO:<bob@example.test>\r\nDATA\r\n.\r\n")
        first = c.reply()
        return first, c.cmd(b"NOOP"), c.cmd(b"RCPT TO:<bob@example.test>")

    final, noop, rcpt = await deferToThread(session)
    assert final == b"500 5.5.2 Line too long"
    assert noop.startswith(b"250")
    assert rcpt.startswith(b"503 5.5.1")  # the MAIL inside the body never ran
    assert await host.read_messages() == []
    assert await host.read_messages("bob@example.test") == []


@pytest_twisted.ensureDeferred
async def test_long_command_line(smtp_host):
    host = smtp_host()

    def session():
        c = RawClient(host.port)
        c.send(b"NOOP " + b"z" * 100_000 + b"\r\n")
        return c.reply(), c.cmd(b"NOOP")

    long_reply, noop = await deferToThread(session)
    assert long_reply == b"500 5.5.2 Error: line too long"
    assert noop.startswith(b"250")


@pytest_twisted.ensureDeferred
async def test_junk_command_limit(smtp_host):
    host = smtp_host(max_junk_commands=3)

    def session():
        c = RawClient(host.port)
        replies = [c.cmd(b"BOGUS %d" % i) for i in range(4)]
        return replies, c.closed()

    replies, closed = await deferToThread(session)
    assert [r[:3] for r in replies] == [b"500", b"500", b"500", b"421"]
    assert replies[-1].startswith(b"421 4.7.0")
    assert closed


@pytest_twisted.ensureDeferred
async def test_connection_limits(smtp_host):
    host = smtp_host(max_connections=3, max_connections_per_ip=2)

    def session():
        a, b = RawClient(host.port), RawClient(host.port)
        c = RawClient(host.port)
        third = (c.greeting, c.closed())
        a.cmd(b"QUIT")
        a.close()
        time.sleep(0.3)
        d = RawClient(host.port)
        return a.greeting, b.greeting, third, d.greeting

    a, b, third, d = await deferToThread(session)
    assert a.startswith(b"220") and b.startswith(b"220") and d.startswith(b"220")
    assert third[0].startswith(b"421 4.7.0") and b"from 127.0.0.1" in third[0] and third[1]


@pytest_twisted.ensureDeferred
async def test_total_connection_limit(smtp_host):
    host = smtp_host(max_connections=1, max_connections_per_ip=5)

    def session():
        a = RawClient(host.port)
        # A session with a mail transaction is not evicted to make room (an idle one
        # would be: tests/security/test_slow_clients.py).
        a.cmd(b"EHLO c")
        a.cmd(b"MAIL FROM:<s@remote.test>")
        b = RawClient(host.port)
        return a.greeting, b.greeting, b.closed()

    a, b, closed = await deferToThread(session)
    assert a.startswith(b"220") and b.startswith(b"421 4.7.0") and closed
    assert b"too many connections to this server" in b


@pytest_twisted.ensureDeferred
async def test_command_timeout(smtp_host):
    host = smtp_host(command_timeout=0.5)

    def session():
        c = RawClient(host.port)
        return c.reply(), c.closed()

    reply, closed = await deferToThread(session)
    assert reply.startswith(b"421 4.4.2") and closed


@pytest_twisted.ensureDeferred
async def test_each_command_line_restarts_the_command_deadline(smtp_host):
    """Issue 18: the session's one timer is not moved for every line; a line only
    moves the deadline, and the timer, firing before it, waits out the rest. So a
    client that sends a command every 0.25 s outlives several 0.6 s periods, and one
    that then stays silent is cut one period after its last line, not earlier."""
    host = smtp_host(command_timeout=0.6)

    def session():
        c = RawClient(host.port)
        assert c.greeting.startswith(b"220")
        replies = []
        for _ in range(6):
            time.sleep(0.25)
            replies.append(c.cmd(b"NOOP"))
        last = time.monotonic()
        reply = c.reply()
        return replies, reply, time.monotonic() - last, c.closed()

    replies, reply, silent, closed = await deferToThread(session)
    assert all(r.startswith(b"250") for r in replies)
    assert reply.startswith(b"421 4.4.2") and closed
    assert 0.55 <= silent < 3.0


@pytest_twisted.ensureDeferred
async def test_data_timeout_stores_nothing(smtp_host):
    host = smtp_host(data_timeout=0.5)

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        c.cmd(b"MAIL FROM:<s@remote.test>")
        c.cmd(b"RCPT TO:<alice@example.test>")
        c.cmd(b"DATA")
        c.send(b"Subject: slow\r\n\r\npartial")
        return c.reply(), c.closed()

    reply, closed = await deferToThread(session)
    assert reply.startswith(b"421 4.4.2") and closed
    assert await host.read_messages() == []


@pytest_twisted.ensureDeferred
async def test_disconnect_mid_data_stores_nothing(smtp_host):
    host = smtp_host()

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        c.cmd(b"MAIL FROM:<s@remote.test>")
        c.cmd(b"RCPT TO:<alice@example.test>")
        c.cmd(b"RCPT TO:<far@elsewhere.test>")
        c.cmd(b"DATA")
        c.send(b"Subject: cut\r\n\r\n" + b"data\r\n" * 10_000)
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        time.sleep(0.3)

    await deferToThread(session)
    assert await host.read_messages() == []
    assert host.factory.sessions == set()


@pytest_twisted.ensureDeferred
async def test_hop_limit(smtp_host):
    host = smtp_host(max_hops=5)
    loop = b"".join(b"Received: from h%d by h%d; Mon, 1 Jan 2024 00:00:00 +0000\r\n" % (i, i)
                    for i in range(6))

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        out = []
        for headers in (loop, loop[: loop.rfind(b"Received")]):
            c.cmd(b"MAIL FROM:<s@remote.test>")
            c.cmd(b"RCPT TO:<alice@example.test>")
            c.cmd(b"DATA")
            c.send(headers + b"Subject: loop\r\n\r\nReceived: in the body does not count\r\n"
                   b"Received: x\r\n.\r\n")
            out.append(c.reply())
        return out

    looped, fine = await deferToThread(session)
    assert looped == b"554 5.4.6 Too many hops"
    assert fine.startswith(b"250")
    assert len(await host.read_messages()) == 1


@pytest_twisted.ensureDeferred
async def test_smtputf8(smtp_host):
    host = smtp_host()

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        no_utf8 = c.cmd("MAIL FROM:<jörg@remote.test>".encode())
        ok = c.cmd("MAIL FROM:<jörg@rémote.test> SMTPUTF8 BODY=8BITMIME".encode())
        rcpt = c.cmd(b"RCPT TO:<alice@example.test>")
        c.cmd(b"DATA")
        c.send("Subject: grüße\r\n\r\nß\r\n.\r\n".encode())
        return no_utf8, ok, rcpt, c.reply()

    no_utf8, ok, rcpt, final = await deferToThread(session)
    assert no_utf8 == b"553 5.6.7 Non-ASCII address requires SMTPUTF8"
    assert ok.startswith(b"250") and rcpt.startswith(b"250") and final.startswith(b"250")
    (stored,) = await host.read_messages()
    assert "Return-Path: <jörg@rémote.test>".encode() in stored
    assert b"with UTF8SMTP id" in stored


@pytest_twisted.ensureDeferred
async def test_dsn_parameters_reach_the_queue(smtp_host):
    host = smtp_host(relay_networks=["127.0.0.1/32"])

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        out = [c.cmd(b"MAIL FROM:<s@example.test> RET=HDRS ENVID=abc+2Bdef"),
               c.cmd(b"RCPT TO:<far@elsewhere.test> NOTIFY=SUCCESS,FAILURE "
                     b"ORCPT=rfc822;far+40elsewhere.test"),
               c.cmd(b"RCPT TO:<x@elsewhere.test> NOTIFY=NEVER,SUCCESS"),
               c.cmd(b"RCPT TO:<x@elsewhere.test> XYZ=1"),
               c.cmd(b"DATA")]
        c.send(b"Subject: dsn\r\n\r\nx\r\n.\r\n")
        out.append(c.reply())
        return out

    mail, rcpt, bad_notify, unknown, data, final = await deferToThread(session)
    assert mail.startswith(b"250") and rcpt.startswith(b"250")
    assert bad_notify.startswith(b"501 5.5.4")
    assert unknown.startswith(b"555 5.5.4")
    assert final.startswith(b"250")
    (writer,) = host.queue.writers
    assert writer.envid == "abc+def" and writer.ret == "HDRS"
    (_s, (rcpt,), _data), = host.queue.committed
    assert rcpt.notify == frozenset({"SUCCESS", "FAILURE"})
    assert rcpt.orcpt == "rfc822;far@elsewhere.test"


@pytest_twisted.ensureDeferred
async def test_too_many_recipients(smtp_host):
    host = smtp_host(max_recipients=2)

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        c.cmd(b"MAIL FROM:<s@remote.test>")
        return [c.cmd(b"RCPT TO:<%s@example.test>" % u) for u in (b"alice", b"bob", b"carol")]

    replies = await deferToThread(session)
    assert [r[:3] for r in replies] == [b"250", b"250", b"452"]
    assert replies[2].startswith(b"452 4.5.3")


@pytest_twisted.ensureDeferred
async def test_bdat_chunking(smtp_host):
    host = smtp_host(max_message_size=2000)
    body1, body2 = b"Subject: chunks\r\n\r\nHello", b" world\r\n.not stuffed\r\n"

    def session():
        c = RawClient(host.port)
        ehlo = c.cmd(b"EHLO c")
        # everything pipelined in one write, chunks containing CRLF and dots verbatim
        c.send(b"MAIL FROM:<s@far.test>\r\nRCPT TO:<alice@example.test>\r\n"
               b"BDAT %d\r\n%sBDAT %d LAST\r\n%sNOOP\r\n" % (len(body1), body1, len(body2), body2))
        first = [c.reply() for _ in range(5)]
        # refused chunks are still consumed: no MAIL, then too big, then DATA after BDAT
        def chunk(data: bytes) -> bytes:
            c.send(data)
            return c.reply()

        second = [chunk(b"BDAT 4\r\nQUIT"), c.cmd(b"MAIL FROM:<s@far.test>"),
                  c.cmd(b"RCPT TO:<alice@example.test>"),
                  chunk(b"BDAT 3000\r\n" + b"x" * 3000), chunk(b"BDAT 2 LAST\r\nok"),
                  c.cmd(b"MAIL FROM:<s@far.test>"), c.cmd(b"RCPT TO:<alice@example.test>"),
                  chunk(b"BDAT 2\r\nab"), c.cmd(b"DATA"), c.cmd(b"RSET"), c.cmd(b"NOOP")]
        return ehlo, first, second

    ehlo, first, second = await deferToThread(session)
    assert b"CHUNKING" in ehlo
    assert [r[:3] for r in first] == [b"250"] * 5
    assert first[2] == b"250 2.0.0 Ok: %d octets received" % len(body1)
    assert first[3].startswith(b"250 2.0.0 Ok: queued as")
    assert [r[:3] for r in second] == [b"503", b"250", b"250", b"552", b"503", b"250", b"250",
                                       b"250", b"503", b"250", b"250"]
    (stored,) = await host.read_messages()
    assert stored.endswith(body1 + body2)
    assert stored.startswith(b"Return-Path: <s@far.test>\r\nReceived: ")


@pytest_twisted.ensureDeferred
async def test_disconnect_mid_bdat_stores_nothing(smtp_host):
    host = smtp_host()

    def session():
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        c.cmd(b"MAIL FROM:<s@far.test>")
        c.cmd(b"RCPT TO:<alice@example.test>")
        c.send(b"BDAT 5\r\nfirst")
        ok = c.reply()
        c.send(b"BDAT 100 LAST\r\npartial")
        c.close()
        time.sleep(0.3)
        return ok

    assert (await deferToThread(session)).startswith(b"250")
    assert await host.read_messages() == []
    assert host.factory.sessions == set()


@pytest_twisted.ensureDeferred
async def test_non_ascii_digits_are_a_syntax_error_not_a_dropped_session(smtp_host):
    """'²' and '٣' pass str.isdigit(); int('²') raises. Both must get a 501."""
    host = smtp_host()

    def session():
        c = RawClient(host.port)
        out = [c.cmd(b"EHLO client.test")]
        for cmd in ("MAIL FROM:<a@example.test> SIZE=\u00b2", "MAIL FROM:<a@example.test> SIZE=\u0663",
                    "BDAT \u00b2", "BDAT \u0663 LAST", "NOOP"):
            out.append(c.cmd(cmd.encode()))
        return out

    _, size_sup, size_arabic, bdat_sup, bdat_arabic, noop = await deferToThread(session)
    for reply in (size_sup, size_arabic, bdat_sup, bdat_arabic):
        assert reply.startswith(b"501 5.5.4"), reply
    assert noop.startswith(b"250 2.0.0")


@pytest_twisted.ensureDeferred
async def test_replies_go_out_at_once_not_after_the_clients_delayed_ack(smtp_host):
    """Pipelined MAIL, RCPT and BDAT LAST: the final 250 follows two 250s the client
    does not answer, so with Nagle on it waited for the client's delayed ACK (44 ms
    per message, half the relay's throughput). The server turns Nagle off."""
    host = smtp_host()
    body = b"Subject: nagle\r\n\r\nx\r\n"

    def connect():
        c = RawClient(host.port)
        c.cmd(b"EHLO c.test")
        return c

    c = await deferToThread(connect)
    [session] = host.factory.sessions
    sock = session.transport.getHandle()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    def pipelined():
        c.send(b"MAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
               b"BDAT %d LAST\r\n%s" % (len(body), body))
        return [c.reply() for _ in range(3)]

    replies = await deferToThread(pipelined)
    assert [r[:3] for r in replies] == [b"250"] * 3
    [stored] = await host.read_messages()
    assert stored.endswith(body)


@pytest_twisted.ensureDeferred
async def test_the_final_dot_asks_for_quota_limits_only_if_rcpt_found_one(smtp_host, tmp_path):
    """Issue 18: a recipient without a limit at RCPT is not looked up again at the
    final dot (two passwd look-ups a message); one with a limit is, and a message
    larger than it, sent without SIZE=, still gets 552 5.2.2 there."""
    from mailhost.store.maildir import MaildirStore

    store = MaildirStore(str(tmp_path / "mail"), fsync=False)
    asked: list[str] = []
    limits = {"bob@example.test": 1000}
    store.set_quota_limits(lambda user: asked.append(user) or limits.get(user, 0))
    host = smtp_host(store=store)

    def send(rcpt: bytes, size: int):
        c = RawClient(host.port)
        c.cmd(b"EHLO c")
        c.cmd(b"MAIL FROM:<s@remote.test>")
        assert c.cmd(b"RCPT TO:<" + rcpt + b">").startswith(b"250")
        before = len(asked)
        c.cmd(b"DATA")
        reply = c.cmd(b"Subject: q\r\n\r\n" + b"x" * size + b"\r\n.")
        c.cmd(b"QUIT")
        return reply, len(asked) - before

    reply, at_dot = await deferToThread(send, b"alice@example.test", 2000)
    assert reply.startswith(b"250") and at_dot == 0
    reply, at_dot = await deferToThread(send, b"bob@example.test", 2000)
    assert reply.startswith(b"552 5.2.2") and at_dot == 1
    await store.close()


@pytest_twisted.ensureDeferred
async def test_ehlo_replies_are_made_once_per_content(smtp_host):
    """Issue 18: every session's EHLO gets the factory's one Reply for its content
    (kept wire form), and a session whose offer differs (after AUTH is allowed or
    TLS started) gets its own."""
    host = smtp_host()

    def ehlo_twice():
        return [RawClient(host.port).cmd(b"EHLO c") for _ in range(2)]

    first, second = await deferToThread(ehlo_twice)
    assert first == second and b"PIPELINING" in first
    factory = host.factory
    assert factory.reply(250, ("a", "B")) is factory.reply(250, ("a", "B"))
    assert factory.reply(250, ("a", "B")) is not factory.reply(250, ("a", "C"))
    assert factory.reply(250, ("a", "B")).to_bytes() == b"250-a\r\n250 B\r\n"
