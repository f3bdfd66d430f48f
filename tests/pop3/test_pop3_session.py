"""POP3 sessions over real loopback sockets with poplib and a byte-exact raw client."""

from __future__ import annotations

import base64
import itertools
import poplib

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.pop3.pop3_clients import RawClient, unstuff

MSG1 = b"From: a@example.test\r\nSubject: one\r\n\r\nHello\r\n.dot line\r\n..two\r\nend\r\n"
MSG2 = b"From: b@example.test\r\nSubject: two\r\n\r\nbody 1\r\nbody 2\r\nbody 3\r\n"


def login(port: int, user: str = "alice@example.test", password: str = "secret"):
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    client.user(user)
    client.pass_(password)
    return client


@pytest_twisted.ensureDeferred
async def test_stat_list_uidl_retr_top_with_poplib(pop3):
    host = await pop3()
    uid1, uid2 = await host.deliver(MSG1), await host.deliver(MSG2)
    folder = await host.folder()

    def session():
        client = poplib.POP3("127.0.0.1", host.port, timeout=10)
        capa = client.capa()
        client.user("alice@example.test")
        client.pass_("secret")
        stat = client.stat()
        listing = client.list()
        uidl = client.uidl()
        retr = client.retr(1)
        top0 = client.top(2, 0)
        top2 = client.top(2, 2)
        client.quit()
        return capa, stat, listing, uidl, retr, top0, top2

    capa, stat, listing, uidl, retr, top0, top2 = await deferToThread(session)
    assert {"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "USER"} <= set(capa)
    assert capa["SASL"] == ["PLAIN"] and capa["IMPLEMENTATION"] == ["mailhost"]
    assert "STLS" not in capa  # no TLS configured: never advertise what we cannot do
    assert stat == (2, len(MSG1) + len(MSG2))
    assert listing[1] == [b"1 %d" % len(MSG1), b"2 %d" % len(MSG2)]
    v = folder.uid_validity
    assert uidl[1] == [b"1 %08x%08x" % (v, uid1), b"2 %08x%08x" % (v, uid2)]
    assert b"\r\n".join(retr[1]) + b"\r\n" == MSG1
    assert top0[1] == [b"From: b@example.test", b"Subject: two", b""]
    assert top2[1] == [b"From: b@example.test", b"Subject: two", b"", b"body 1", b"body 2"]
    # RETR marks \Seen, TOP does not; nothing was deleted in keep mode.
    assert "\\Seen" in folder.get(uid1).flags
    assert "\\Seen" not in folder.get(uid2).flags
    assert [i.uid for i in folder.messages()] == [uid1, uid2]


@pytest_twisted.ensureDeferred
async def test_list_size_equals_octets_sent(pop3):
    """LIST's size is exactly what RETR sends between +OK and '.', before stuffing."""
    host = await pop3()
    messages = [MSG1, b".\r\n", b"..\r\n.\r\n.x", b"", b"no final newline", b"\r\n\r\n.\r\n"]
    for m in messages:
        await host.deliver(m)

    def session():
        c = RawClient(host.port)
        c.cmd(b"USER alice@example.test"), c.cmd(b"PASS secret")
        out = []
        for n in range(1, len(messages) + 1):
            size = int(c.cmd(b"LIST %d" % n).split()[2])
            assert c.cmd(b"RETR %d" % n).startswith(b"+OK")
            out.append((size, unstuff(c.multi())))
        c.cmd(b"QUIT")
        return out

    for message, (size, body) in zip(messages, await deferToThread(session), strict=True):
        assert size == len(message)
        if message.endswith(b"\r\n") or not message:
            assert body == message
        else:  # the server adds the CRLF the terminating '.' line needs
            assert body == message + b"\r\n"


@pytest_twisted.ensureDeferred
async def test_dot_lines_at_every_chunk_position_byte_for_byte(pop3):
    """'.' at the start of the message and of lines straddling read-chunk boundaries."""
    from mailhost.store.reader import CHUNK_SIZE

    host = await pop3()
    messages = []
    for chunk, offset in itertools.product((64 * 1024, CHUNK_SIZE), (-3, -2, -1, 0, 1, 2)):
        # Lines of 1000 octets, then a short filler so a '.' line starts at chunk+offset.
        head = b".first\r\n"
        body = b"".join(b".%s\r\n" % (b"x" * 997) for _ in range(64))
        filler_len = chunk + offset - len(head) - len(body) - 2
        filler = b"y" * (filler_len % 900) + b"\r\n"
        lines = []
        size = len(head) + len(body)
        while size + len(filler) < chunk + offset - 2:
            lines.append(filler)
            size += len(filler)
        pad = chunk + offset - size - 2
        lines.append(b"z" * max(pad, 0) + b"\r\n")
        tail = b".\r\n..\r\n.dot\r\n" + b"".join(b".%d\r\n" % i for i in range(3000))
        messages.append(head + body + b"".join(lines) + tail)
        assert messages[-1][chunk + offset - 2 : chunk + offset + 1] == b"\r\n."
    messages.append(b"." * (3 * CHUNK_SIZE) + b"\r\n.\r\n")
    uids = [await host.deliver(m) for m in messages]

    def session():
        c = RawClient(host.port)
        c.cmd(b"USER alice@example.test"), c.cmd(b"PASS secret")
        bodies = []
        for n in range(1, len(uids) + 1):
            assert c.cmd(b"RETR %d" % n).startswith(b"+OK")
            bodies.append(c.multi())
        c.cmd(b"QUIT")
        p = login(host.port)  # and poplib agrees on the short-lined ones
        via_poplib = [p.retr(n)[1] for n in range(1, len(uids))]
        p.quit()
        return bodies, via_poplib

    bodies, via_poplib = await deferToThread(session)
    for message, body in zip(messages, bodies, strict=True):
        assert b"\r\r\n" not in body
        assert unstuff(body) == message
        # every line starting with '.' went out doubled
        assert all(not line.startswith(b".") or line.startswith(b"..")
                   for line in body.split(b"\r\n")[:-1])
    for message, lines in zip(messages, via_poplib, strict=False):
        assert b"\r\n".join(lines) + b"\r\n" == message


@pytest_twisted.ensureDeferred
async def test_bad_message_numbers_and_deleted_messages(pop3):
    host = await pop3()
    for m in (MSG1, MSG2, MSG1):
        await host.deliver(m)

    def session():
        c = RawClient(host.port)
        c.cmd(b"USER alice@example.test"), c.cmd(b"PASS secret")
        bad = [c.cmd(b"%s %s" % (verb, arg))
               for verb in (b"DELE", b"RETR", b"LIST", b"UIDL", b"TOP")
               for arg in (b"0", b"-1", b"4", b"abc", b"1.5", b"\xd9\xa3", b"99999999999")]
        bad += [c.cmd(verb) for verb in (b"DELE", b"RETR", b"TOP", b"DELE 1 2")]
        dele = c.cmd(b"DELE 3")
        again = [c.cmd(b"DELE 3"), c.cmd(b"RETR 3"), c.cmd(b"LIST 3"), c.cmd(b"UIDL 3"),
                 c.cmd(b"TOP 3 0")]
        stat = c.cmd(b"STAT")
        assert c.cmd(b"LIST").startswith(b"+OK")
        listing = c.multi()
        assert c.cmd(b"UIDL").startswith(b"+OK")
        uidl = c.multi()
        rset = c.cmd(b"RSET")
        stat2 = c.cmd(b"STAT")
        top_bad = [c.cmd(b"TOP 1"), c.cmd(b"TOP 1 -1"), c.cmd(b"TOP 1 x")]
        noop = c.cmd(b"NOOP")
        c.cmd(b"QUIT")
        return bad, dele, again, stat, listing, uidl, rset, stat2, top_bad, noop

    bad, dele, again, stat, listing, uidl, rset, stat2, top_bad, noop = await deferToThread(session)
    assert all(r.startswith(b"-ERR") for r in bad), bad
    assert dele.startswith(b"+OK")
    assert all(r.startswith(b"-ERR") for r in again), again
    assert stat == b"+OK 2 %d" % (len(MSG1) + len(MSG2))
    assert listing.split(b"\r\n")[:-1] == [b"1 %d" % len(MSG1), b"2 %d" % len(MSG2)]
    assert [line.split()[0] for line in uidl.split(b"\r\n")[:-1]] == [b"1", b"2"]
    assert rset.startswith(b"+OK") and stat2 == b"+OK 3 %d" % (2 * len(MSG1) + len(MSG2))
    assert all(r.startswith(b"-ERR") for r in top_bad)
    assert noop == b"+OK"
    assert len((await host.folder()).messages()) == 3  # RSET before QUIT: nothing deleted


@pytest_twisted.ensureDeferred
async def test_delete_mode_expunge_policy(pop3):
    from twisted.logger import globalLogPublisher

    host = await pop3(delete="expunge")
    uids = [await host.deliver(m) for m in (MSG1, MSG2, MSG1)]
    ends: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("event") == "pop3_session_end":
            ends.append(event)

    def session():
        c = login(host.port)
        c.retr(2)
        c.dele(1), c.dele(3)
        return c.quit()

    globalLogPublisher.addObserver(observe)
    try:
        assert (await deferToThread(session)).startswith(b"+OK")
    finally:
        globalLogPublisher.removeObserver(observe)
    assert [i.uid for i in (await host.folder()).messages()] == [uids[1]]
    # one structured event per session end, without secrets
    (end,) = ends
    assert (end["user"], end["reason"], end["retrieved"], end["deleted"]) == (
        "alice@example.test", "quit", 1, 2)
    assert end["octets"] == len(MSG2) and "secret" not in repr(end)


@pytest_twisted.ensureDeferred
async def test_delete_mode_flag_policy_keeps_message_flagged(pop3):
    host = await pop3(delete="flag")
    uids = [await host.deliver(m) for m in (MSG1, MSG2)]

    def session():
        c = login(host.port)
        c.dele(1)
        c.quit()
        c = login(host.port)
        stat, uidl = c.stat(), c.uidl()
        c.quit()
        return stat, uidl

    stat, uidl = await deferToThread(session)
    folder = await host.folder()
    assert [i.uid for i in folder.messages()] == uids  # still in the store
    assert {"\\Deleted", "\\Seen"} <= folder.get(uids[0]).flags
    assert "\\Deleted" not in folder.get(uids[1]).flags
    assert stat == (1, len(MSG2))  # hidden from POP3 from now on
    assert uidl[1] == [b"1 %08x%08x" % (folder.uid_validity, uids[1])]


@pytest_twisted.ensureDeferred
async def test_dropped_connection_deletes_nothing_and_unlocks(pop3):
    host = await pop3()
    for m in (MSG1, MSG2):
        await host.deliver(m)

    def session():
        c = RawClient(host.port)
        c.cmd(b"USER alice@example.test"), c.cmd(b"PASS secret")
        assert c.cmd(b"DELE 1").startswith(b"+OK")
        c.close()  # no QUIT

    await deferToThread(session)

    def again():
        for _ in range(200):  # the server notices the close asynchronously
            try:
                c = login(host.port)
            except poplib.error_proto as e:
                assert b"[IN-USE]" in e.args[0]
                import time

                time.sleep(0.05)
                continue
            stat = c.stat()
            c.quit()
            return stat
        raise AssertionError("lock never released")

    assert await deferToThread(again) == (2, len(MSG1) + len(MSG2))


@pytest_twisted.ensureDeferred
async def test_second_session_gets_in_use(pop3):
    host = await pop3()
    await host.deliver(MSG1)

    def session():
        first = login(host.port)
        second = poplib.POP3("127.0.0.1", host.port, timeout=10)
        second.user("alice@example.test")
        try:
            second.pass_("secret")
        except poplib.error_proto as e:
            refused = e.args[0]
        else:
            refused = b"(accepted)"
        other_user = login(host.port, "bob@example.test", "hunter2")  # other maildrops are fine
        other_user.quit()
        first.quit()
        third = login(host.port)  # the lock went with QUIT
        third.quit()
        second.quit()
        return refused

    assert (await deferToThread(session)).startswith(b"-ERR [IN-USE]")


@pytest_twisted.ensureDeferred
async def test_snapshot_hides_mail_delivered_during_the_session(pop3):
    host = await pop3()
    await host.deliver(MSG1)

    def first_session():
        c = login(host.port)
        return c

    c = await deferToThread(first_session)
    await host.deliver(MSG2)

    def rest():
        during = c.stat()
        bad = c._shortcmd("LIST 2") if False else None
        c.quit()
        n = login(host.port)
        after = n.stat()
        n.quit()
        return during, bad, after

    during, _bad, after = await deferToThread(rest)
    assert during == (1, len(MSG1))
    assert after == (2, len(MSG1) + len(MSG2))


@pytest_twisted.ensureDeferred
async def test_auth_failures_and_resp_codes(pop3):
    host = await pop3()

    def session():
        c = RawClient(host.port)
        no_user = c.cmd(b"PASS secret")
        c.cmd(b"USER alice@example.test")
        bad = c.cmd(b"PASS wrong")
        early = c.cmd(b"STAT")
        c.cmd(b"QUIT")
        return no_user, bad, early

    no_user, bad, early = await deferToThread(session)
    assert no_user.startswith(b"-ERR")
    assert bad.startswith(b"-ERR [AUTH]")
    assert early.startswith(b"-ERR")


@pytest_twisted.ensureDeferred
async def test_throttled_login_gets_sys_temp(pop3):
    from mailhost.auth.throttle import LoginThrottle

    host = await pop3(throttle=LoginThrottle(max_failures=2, window=60, lockout=60))

    def session():
        c = RawClient(host.port)
        replies = []
        for _ in range(3):
            c.cmd(b"USER alice@example.test")
            replies.append(c.cmd(b"PASS wrong"))
        c.cmd(b"USER alice@example.test")
        replies.append(c.cmd(b"PASS secret"))
        return replies

    replies = await deferToThread(session)
    assert replies[0].startswith(b"-ERR [AUTH]")
    assert replies[-1].startswith(b"-ERR [SYS/TEMP]")


@pytest_twisted.ensureDeferred
async def test_sasl_plain_initial_response_continuation_and_cancel(pop3):
    host = await pop3()
    await host.deliver(MSG1)
    good = base64.b64encode(b"\0alice@example.test\0secret")
    proxy = base64.b64encode(b"bob@example.test\0alice@example.test\0secret")

    def session():
        out = {}
        c = RawClient(host.port)
        out["cancel"] = (c.cmd(b"AUTH PLAIN"), c.cmd(b"*"))
        out["garbage"] = c.cmd(b"AUTH PLAIN !!!notbase64")
        out["proxy"] = c.cmd(b"AUTH PLAIN " + proxy)
        out["wrong"] = c.cmd(b"AUTH PLAIN " + base64.b64encode(b"\0alice@example.test\0x"))
        out["mech"] = c.cmd(b"AUTH CRAM-MD5")
        out["ok"] = (c.cmd(b"AUTH PLAIN"), c.cmd(good))
        out["stat"] = c.cmd(b"STAT")
        c.cmd(b"QUIT")
        c = RawClient(host.port)
        out["initial"] = c.cmd(b"AUTH PLAIN " + good)
        c.cmd(b"QUIT")
        return out

    out = await deferToThread(session)
    assert out["cancel"][0] == b"+ " and out["cancel"][1].startswith(b"-ERR [AUTH]")
    assert out["garbage"].startswith(b"-ERR")
    assert out["proxy"].startswith(b"-ERR [AUTH]")
    assert out["wrong"].startswith(b"-ERR [AUTH]")
    assert out["mech"].startswith(b"-ERR")
    assert out["ok"][0] == b"+ " and out["ok"][1].startswith(b"+OK")
    assert out["stat"] == b"+OK 1 %d" % len(MSG1)
    assert out["initial"].startswith(b"+OK")


@pytest_twisted.ensureDeferred
async def test_plaintext_refused_without_tls(pop3):
    host = await pop3(allow_plaintext="no")

    def session():
        c = RawClient(host.port)
        assert c.cmd(b"CAPA").startswith(b"+OK")
        capa = c.multi().split(b"\r\n")
        user = c.cmd(b"USER alice@example.test")
        auth = c.cmd(b"AUTH PLAIN " + base64.b64encode(b"\0alice@example.test\0secret"))
        c.cmd(b"QUIT")
        return capa, user, auth

    capa, user, auth = await deferToThread(session)
    assert b"USER" not in capa and b"SASL PLAIN" not in capa
    for reply in (user, auth):
        assert reply.startswith(b"-ERR [AUTH] Plaintext authentication disallowed")
        assert b"STLS" in reply


@pytest_twisted.ensureDeferred
async def test_pipelined_commands_answer_in_order(pop3):
    host = await pop3()
    for m in (MSG1, MSG2):
        await host.deliver(m)

    def session():
        c = RawClient(host.port)
        c.send(b"USER alice@example.test\r\nPASS secret\r\nSTAT\r\nRETR 1\r\nTOP 2 1\r\n"
               b"LIST 2\r\nDELE 1\r\nSTAT\r\nQUIT\r\n")
        user, pw, stat = c.line(), c.line(), c.line()
        retr = (c.line(), c.multi())
        top = (c.line(), c.multi())
        return user, pw, stat, retr, top, c.line(), c.line(), c.line(), c.line()

    user, pw, stat, retr, top, list2, dele, stat2, quit_ = await deferToThread(session)
    assert user.startswith(b"+OK") and pw.startswith(b"+OK")
    assert stat == b"+OK 2 %d" % (len(MSG1) + len(MSG2))
    assert unstuff(retr[1]) == MSG1
    assert top[1] == b"From: b@example.test\r\nSubject: two\r\n\r\nbody 1\r\n"
    assert list2 == b"+OK 2 %d" % len(MSG2)
    assert dele.startswith(b"+OK") and stat2 == b"+OK 1 %d" % len(MSG2)
    assert quit_.startswith(b"+OK")
    assert len((await host.folder()).messages()) == 1


@pytest_twisted.ensureDeferred
async def test_long_lines_get_err_and_errors_are_bounded(pop3):
    host = await pop3()

    def session():
        c = RawClient(host.port)
        long_line = c.cmd(b"NOOP " + b"x" * 5000)
        long_split = (c.send(b"USER " + b"y" * 3000), c.send(b"z" * 3000 + b"\r\n"), c.line())[2]
        still = c.cmd(b"CAPA")
        c.multi()
        replies = [c.cmd(b"BOGUS") for _ in range(17)]
        last = c.line() if False else c.cmd(b"BOGUS")
        return long_line, long_split, still, replies, last, c.closed()

    long_line, long_split, still, replies, last, closed = await deferToThread(session)
    assert long_line.startswith(b"-ERR") and long_split.startswith(b"-ERR")
    assert still.startswith(b"+OK")
    assert all(r.startswith(b"-ERR") for r in replies)
    assert b"Too many errors" in last and closed


@pytest_twisted.ensureDeferred
async def test_idle_timeout_closes_without_deleting(pop3):
    host = await pop3(timeout=2.0)  # long enough for a loaded CI box between commands
    await host.deliver(MSG1)

    def session():
        c = RawClient(host.port)
        c.cmd(b"USER alice@example.test"), c.cmd(b"PASS secret")
        c.cmd(b"DELE 1")
        return c.line(), c.closed()

    reply, closed = await deferToThread(session)
    assert reply.startswith(b"-ERR") and closed
    assert len((await host.folder()).messages()) == 1


@pytest_twisted.ensureDeferred
async def test_uidl_stable_across_restart_and_flag_changes(pop3, tmp_path):
    from mailhost.store.maildir import MaildirStore

    host = await pop3()
    for m in (MSG1, MSG2, MSG1):
        await host.deliver(m)

    def uidl(port):
        c = login(port)
        listing = c.uidl()[1]
        c.retr(2)  # flags change (\Seen) must not change any UIDL
        c.dele(1)
        c.quit()
        return listing

    first = await deferToThread(uidl, host.port)
    await host.listening.stopListening()
    await host.store.close()
    # A restart: a new store object over the same Maildir, a new listener.
    again = await pop3(store=MaildirStore(str(tmp_path / "mail")))
    second = await deferToThread(uidl, again.port)
    assert len(set(first)) == 3
    assert second == [b"1 " + first[1].split()[1], b"2 " + first[2].split()[1]]
    assert all(1 <= len(line.split()[1]) <= 70 for line in first)


@pytest_twisted.ensureDeferred
async def test_out_of_order_retr_and_dele_around_the_read_ahead(pop3):
    """The server opens message n+1 while sending n; jumps, DELE and RSET must not confuse it."""
    host = await pop3()
    bodies = [b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i) for i in range(1, 6)]
    for body in bodies:
        await host.deliver(body)

    def session():
        c = RawClient(host.port)
        c.cmd(b"USER alice@example.test"), c.cmd(b"PASS secret")
        got = []
        for command in (b"RETR 1", b"DELE 2", b"RETR 3", b"RETR 5", b"RETR 4", b"TOP 1 0",
                        b"RETR 2", b"RSET", b"RETR 2", b"RETR 1"):
            reply = c.cmd(command)
            if reply.startswith(b"+OK") and command[:4] in (b"RETR", b"TOP "):
                got.append((command, unstuff(c.multi())))
            else:
                got.append((command, reply[:4]))
        c.cmd(b"QUIT")
        return got

    results = await deferToThread(session)
    assert [out for cmd, out in results if cmd == b"RETR 2"] == [b"-ERR", bodies[1]]
    got = dict((cmd, out) for cmd, out in results if cmd != b"RETR 2")
    assert got[b"RETR 1"] == bodies[0] and got[b"RETR 3"] == bodies[2]
    assert got[b"RETR 5"] == bodies[4] and got[b"RETR 4"] == bodies[3]
    assert got[b"TOP 1 0"] == b"Subject: 1\r\n\r\n"
    assert got[b"DELE 2"] == b"+OK " and got[b"RSET"] == b"+OK "


@pytest_twisted.ensureDeferred
async def test_lock_shared_by_two_listeners(pop3):
    """Port 110 and 995 factories given one MaildropLocks refuse a second session across them."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    from mailhost.pop3.factory import POP3Factory

    host = await pop3()
    other = POP3Factory(host.factory.settings, host.factory.login, locks=host.factory.locks)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(other)

    def session():
        first = login(host.port)
        second = poplib.POP3("127.0.0.1", port.getHost().port, timeout=10)
        second.user("alice@example.test")
        try:
            second.pass_("secret")
            refused = b"(accepted)"
        except poplib.error_proto as e:
            refused = e.args[0]
        first.quit()
        second.quit()
        return refused

    try:
        assert (await deferToThread(session)).startswith(b"-ERR [IN-USE]")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_quit_answers_err_when_deletions_fail(pop3):
    from twisted.internet import defer

    host = await pop3()
    await host.deliver(MSG1)
    folder = await host.folder()
    folder.expunge = lambda uids=None: defer.fail(OSError("disk full"))  # this folder only

    def session():
        c = RawClient(host.port)
        c.cmd(b"USER alice@example.test"), c.cmd(b"PASS secret")
        c.cmd(b"DELE 1")
        return c.cmd(b"QUIT"), c.closed()

    reply, closed = await deferToThread(session)
    assert reply.startswith(b"-ERR [SYS/TEMP]") and closed
    assert len(folder.messages()) == 1
