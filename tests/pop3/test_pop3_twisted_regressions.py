"""Regression tests named after the twisted.mail.pop3 defects in TWISTED-MAIL-NOTES.md."""

from __future__ import annotations

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.pop3.pop3_clients import RawClient, unstuff


def logged_in(port: int) -> RawClient:
    c = RawClient(port)
    c.cmd(b"USER alice@example.test")
    assert c.cmd(b"PASS secret").startswith(b"+OK")
    return c


@pytest_twisted.ensureDeferred
async def test_twisted_retr_dot_on_first_line_is_stuffed_and_crlf_not_doubled(pop3):
    host = await pop3()
    message = b".first line is a dot line\r\nSubject: x\r\n\r\n.\r\nbody\r\n"
    await host.deliver(message)

    def session():
        c = logged_in(host.port)
        c.cmd(b"RETR 1")
        return c.multi()

    wire = await deferToThread(session)
    assert wire.startswith(b"..first line")
    assert b"\r\r\n" not in wire and b"\r\n..\r\n" in wire
    assert unstuff(wire) == message


@pytest_twisted.ensureDeferred
async def test_twisted_dele_0_does_not_delete_the_last_message(pop3):
    host = await pop3()
    await host.deliver(b"Subject: 1\r\n\r\none\r\n")
    await host.deliver(b"Subject: 2\r\n\r\ntwo\r\n")

    def session():
        c = logged_in(host.port)
        replies = [c.cmd(b"DELE 0"), c.cmd(b"DELE -1")]
        return replies, c.cmd(b"STAT"), c.cmd(b"QUIT")

    replies, stat, quit_reply = await deferToThread(session)
    assert all(r.startswith(b"-ERR") for r in replies)
    assert stat.startswith(b"+OK 2 ") and quit_reply.startswith(b"+OK")
    assert len((await host.folder()).messages()) == 2


@pytest_twisted.ensureDeferred
async def test_twisted_9094_deleted_messages_leave_list_and_uidl(pop3):
    host = await pop3()
    for n in range(3):
        await host.deliver(b"Subject: %d\r\n\r\nbody\r\n" % n)

    def session():
        c = logged_in(host.port)
        c.cmd(b"DELE 2")
        c.cmd(b"LIST")
        listing = c.multi()
        c.cmd(b"UIDL")
        uidl = c.multi()
        return listing, uidl, c.cmd(b"LIST 2"), c.cmd(b"UIDL 2")

    listing, uidl, list2, uidl2 = await deferToThread(session)
    assert [line.split()[0] for line in listing.split(b"\r\n")[:-1]] == [b"1", b"3"]
    assert [line.split()[0] for line in uidl.split(b"\r\n")[:-1]] == [b"1", b"3"]
    assert list2.startswith(b"-ERR") and uidl2.startswith(b"-ERR")


@pytest_twisted.ensureDeferred
async def test_twisted_connection_lost_undeletes_without_the_backend(pop3):
    host = await pop3()
    await host.deliver(b"Subject: keep\r\n\r\nbody\r\n")

    def session():
        c = logged_in(host.port)
        c.cmd(b"DELE 1")
        c.close()

    await deferToThread(session)
    folder = await host.folder()
    assert [sorted(i.flags) for i in folder.messages()] == [[]]  # not even \Deleted


@pytest_twisted.ensureDeferred
async def test_twisted_capa_is_honest(pop3):
    host = await pop3()

    def session():
        c = RawClient(host.port)
        c.cmd(b"CAPA")
        return c.multi()

    capa = (await deferToThread(session)).split(b"\r\n")[:-1]
    assert capa == [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING",
                    b"EXPIRE NEVER", b"USER", b"SASL PLAIN", b"IMPLEMENTATION mailhost"]
