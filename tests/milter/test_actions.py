"""Every milter action, over real SMTP into a real mail host, against a scripted
milter (tests/milter/scripted.py) on loopback."""

from __future__ import annotations

import email
import email.policy

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads

from mailhost.milter import protocol as p
from tests.milter import scripted
from tests.milter.hosts import message, milter_host, smtp_send

MSG = message("alice@a.test", "bob@b.test", "milter test")


async def run(tmp_path, script=None, spec="", stages=None, default_action="tempfail", **kw):
    milter = await scripted.start(script, **kw)
    host = milter_host(tmp_path, {"scripted": f"inet:{milter.port}@127.0.0.1 {spec}".strip()},
                       stages=stages, default_action=default_action)
    await host.start()
    return milter, host


async def stop(milter, host):
    await host.stop()
    await milter.stop()


async def until(predicate, timeout=10.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await task.deferLater(reactor, 0.02)
    raise AssertionError("timed out")


async def inbox(host, folder="INBOX"):
    return await host.folder("bob@b.test", folder)


@pytest_twisted.ensureDeferred
async def test_continue_delivers_and_the_milter_sees_the_whole_transaction(tmp_path):
    milter, host = await run(tmp_path)
    try:
        code, _ = await smtp_send(host, MSG, mail_options=("SIZE=1000", "BODY=8BITMIME"))
        assert code == 250
        assert len(await inbox(host)) == 1
        await until(lambda: p.C_QUIT in {c for c, _ in milter.commands})  # at the SMTP QUIT
        commands = [c for c, _ in milter.commands if c != p.C_MACRO]
        assert commands[:6] == [p.C_OPTNEG, p.C_CONNECT, p.C_HELO, p.C_MAIL, p.C_RCPT, p.C_DATA]
        assert commands[-3:] == [p.C_BODY, p.C_BODYEOB, p.C_QUIT]
        connect = p.decode_connect(milter.named(p.C_CONNECT)[0])
        assert (connect.hostname, connect.family, connect.address) == (b"unknown", b"4", b"127.0.0.1")
        assert connect.port > 0
        assert p.decode_args(milter.named(p.C_HELO)[0]) == [b"client.example"]
        assert p.decode_args(milter.named(p.C_MAIL)[0]) == [b"<alice@a.test>", b"SIZE=1000",
                                                            b"BODY=8BITMIME"]
        assert p.decode_args(milter.named(p.C_RCPT)[0]) == [b"<bob@b.test>"]
        headers = [p.decode_header(h) for h in milter.named(p.C_HEADER)]
        assert (b"Subject", b"milter test") in headers
        assert b"".join(milter.named(p.C_BODY)) == b"Hello.\r\n"
        macros = milter.macros()
        assert macros[p.C_CONNECT][b"j"] == b"mx.b.test"
        assert macros[p.C_CONNECT][b"{daemon_name}"] == b"mailhost"
        assert macros[p.C_CONNECT][b"{if_name}"] == b"mx.b.test"
        assert macros[p.C_CONNECT][b"_"] == b"unknown [127.0.0.1]"
        # No queue id at MAIL FROM yet, as in Postfix (smtpd_delay_open_until_valid_rcpt)
        assert b"i" not in macros[p.C_MAIL]
        queue_id = macros[p.C_RCPT][b"i"]
        assert queue_id and macros[p.C_BODYEOB][b"i"] == queue_id
        assert macros[p.C_MAIL][b"{mail_addr}"] == b"alice@a.test"
        assert macros[p.C_RCPT][b"{rcpt_addr}"] == b"bob@b.test"
    finally:
        await stop(milter, host)


@pytest_twisted.ensureDeferred
async def test_the_macros_a_milter_asks_for_are_the_ones_it_gets(tmp_path):
    options = p.Options(6, 0, 0, ((p.M_ENVFROM, b"{mail_addr} j"), (p.M_EOM, b"{rcpt_addr}")))
    milter, host = await run(tmp_path, options=options)
    try:
        assert (await smtp_send(host, MSG))[0] == 250
        macros = milter.macros()
        assert macros[p.C_MAIL] == {b"{mail_addr}": b"alice@a.test", b"j": b"mx.b.test"}
        assert p.C_BODYEOB not in macros  # {rcpt_addr} has no value at end of message
    finally:
        await stop(milter, host)


@pytest_twisted.ensureDeferred
async def test_negotiated_steps_off_and_no_reply_steps_are_honoured(tmp_path):
    flags = (p.P_NOCONNECT | p.P_NOHELO | p.P_NR_HDR | p.P_NR_BODY | p.P_NODATA
             | p.P_HDR_LEADSPC)
    milter, host = await run(tmp_path, options=p.Options(6, p.F_ADDHDRS, flags))
    try:
        assert (await smtp_send(host, MSG))[0] == 250
        commands = {c for c, _ in milter.commands}
        assert not commands & {p.C_CONNECT, p.C_HELO, p.C_DATA}
        headers = [p.decode_header(h) for h in milter.named(p.C_HEADER)]
        assert (b"Subject", b" milter test") in headers  # the leading space kept
    finally:
        await stop(milter, host)


@pytest_twisted.ensureDeferred
async def test_accept_delivers_without_asking_further(tmp_path):
    milter, host = await run(tmp_path, {p.C_MAIL: [(p.R_ACCEPT, None)]})
    try:
        assert (await smtp_send(host, MSG))[0] == 250
        assert len(await inbox(host)) == 1
        assert p.C_RCPT not in {c for c, _ in milter.commands}
    finally:
        await stop(milter, host)


@pytest.mark.parametrize("command", [p.C_CONNECT, p.C_MAIL, p.C_RCPT, p.C_HEADER, p.C_BODYEOB])
@pytest_twisted.ensureDeferred
async def test_reject_with_the_milters_reply_text(tmp_path, command):
    reply = [(p.R_REPLYCODE, (554, "5.7.1", "Spam message rejected"))]
    milter, host = await run(tmp_path, {command: reply})
    try:
        code, text = await smtp_send(host, MSG)
        assert (code, text) == (554, "5.7.1 Spam message rejected")
        assert await inbox(host) == []
    finally:
        await stop(milter, host)


@pytest_twisted.ensureDeferred
async def test_plain_reject_and_tempfail(tmp_path):
    milter, host = await run(tmp_path, {p.C_BODYEOB: [(p.R_REJECT, None)]})
    try:
        code, text = await smtp_send(host, MSG)
        assert code == 550 and text.startswith("5.7.1")
        milter.script[p.C_BODYEOB] = [(p.R_TEMPFAIL, None)]
        code, text = await smtp_send(host, MSG)
        assert code == 451 and text.startswith("4.7.1")
        milter.script[p.C_BODYEOB] = [(p.R_REPLYCODE, (421, "4.3.2", "Try later"))]
        assert await smtp_send(host, MSG) == (421, "4.3.2 Try later")
        assert await inbox(host) == []
    finally:
        await stop(milter, host)


@pytest_twisted.ensureDeferred
async def test_discard_answers_250_and_delivers_nowhere(tmp_path):
    milter, host = await run(tmp_path, {p.C_BODYEOB: [(p.R_DISCARD, None)]})
    try:
        assert (await smtp_send(host, MSG))[0] == 250
        assert await inbox(host) == []
    finally:
        await stop(milter, host)


@pytest_twisted.ensureDeferred
async def test_header_edits_are_applied(tmp_path):
    data = message("alice@a.test", "bob@b.test", "edits",
                   extra="X-Old: one\r\nX-Old: two\r\nX-Gone: x\r\n")
    edits = [
        (p.R_ADDHEADER, p.HeaderChange(b"X-Spam-Score", b"1.5\n\tfolded")),
        (p.R_INSHEADER, p.HeaderChange(b"X-Top", b"first", 0)),
        (p.R_CHGHEADER, p.HeaderChange(b"X-Old", b"changed", 2)),
        (p.R_CHGHEADER, p.HeaderChange(b"X-Gone", b"", 1)),
        (p.R_CHGHEADER, p.HeaderChange(b"X-Injected", b"a\nX-Evil: yes", 1)),
        (p.R_CONTINUE, None),
    ]
    milter, host = await run(tmp_path, {p.C_BODYEOB: edits})
    try:
        assert (await smtp_send(host, data))[0] == 250
        (got,) = await inbox(host)
        assert got.get_all("X-Old") == ["one", "changed"]
        assert got["X-Gone"] is None
        assert got["X-Spam-Score"] == "1.5\tfolded"
        assert got["X-Evil"] is None and got["X-Injected"] == "a\tX-Evil: yes"
        raw = got.as_bytes(policy=email.policy.SMTP)
        # X-Top is the first field of the client's header block (below what we add).
        assert raw.index(b"X-Top: first") < raw.index(b"From: alice@a.test")
    finally:
        await stop(milter, host)


@pytest.mark.parametrize("size", [30, 300_000])
@pytest_twisted.ensureDeferred
async def test_a_new_body_replaces_the_old_one(tmp_path, size):
    """SMFIR_REPLBODY in chunks (the large one goes through the spool's file); a bare
    LF in it becomes CRLF; a second milter reads the new body too."""
    line = b"n" * 98 + b"\n"
    new = line * (size // len(line) + 1)
    chunks = [(p.R_REPLBODY, new[i:i + 65535]) for i in range(0, len(new), 65535)]
    options = p.Options(6, p.F_CHGBODY, 0)
    first = await scripted.start({p.C_BODYEOB: chunks + [(p.R_CONTINUE, None)]}, options=options)
    second = await scripted.start()
    host = milter_host(tmp_path, {"one": f"inet:{first.port}@127.0.0.1",
                                  "two": f"inet:{second.port}@127.0.0.1"})
    await host.start()
    try:
        assert (await smtp_send(host, MSG))[0] == 250
        (got,) = await inbox(host)
        crlf = new.replace(b"\n", b"\r\n")
        assert got.get_content().encode() == crlf
        assert b"".join(second.named(p.C_BODY)) == crlf
        # Refused after a new body: nothing is delivered.
        first.script[p.C_BODYEOB] = chunks + [(p.R_REJECT, None)]
        assert (await smtp_send(host, MSG))[0] == 550
        assert len(await inbox(host)) == 1
    finally:
        await host.stop()
        await first.stop()
        await second.stop()


@pytest_twisted.ensureDeferred
async def test_a_new_body_without_the_negotiated_action_is_a_protocol_error(tmp_path):
    milter, host = await run(tmp_path, {p.C_BODYEOB: [(p.R_REPLBODY, b"x"), (p.R_CONTINUE, None)]})
    try:
        assert (await smtp_send(host, MSG))[0] == 451  # the default action
    finally:
        await stop(milter, host)


@pytest_twisted.ensureDeferred
async def test_recipients_added_and_removed_are_routed(tmp_path):
    """DELRCPT bob, ADDRCPT carol (a local user) and a remote address the client may
    not relay to (left out by the recipient policy, logged)."""
    milter = await scripted.start({p.C_BODYEOB: [
        (p.R_DELRCPT, [b"<Bob@b.test>"]),
        (p.R_ADDRCPT, [b"<carol@b.test>"]),
        (p.R_ADDRCPT_PAR, [b"<someone@elsewhere.example>", b"NOTIFY=NEVER"]),
        (p.R_CONTINUE, None)]},
        options=p.Options(6, p.F_ADDRCPT | p.F_DELRCPT | p.F_ADDRCPT_PAR, 0))
    host = milter_host(tmp_path, {"m": f"inet:{milter.port}@127.0.0.1"},
                       users={"bob@b.test": "pw", "carol@b.test": "pw"})
    await host.start()
    try:
        assert (await smtp_send(host, MSG))[0] == 250
        assert await host.folder("bob@b.test") == []
        assert len(await host.folder("carol@b.test")) == 1
        # Every recipient removed: accepted, delivered nowhere.
        milter.script[p.C_BODYEOB] = [(p.R_DELRCPT, [b"<bob@b.test>"]), (p.R_CONTINUE, None)]
        assert (await smtp_send(host, MSG))[0] == 250
        assert await host.folder("bob@b.test") == []
        assert len(await host.folder("carol@b.test")) == 1
    finally:
        await host.stop()
        await milter.stop()


@pytest_twisted.ensureDeferred
async def test_quarantine_files_the_message_in_junk(tmp_path):
    replies = [(p.R_QUARANTINE, [b"looks bad"]), (p.R_CONTINUE, None)]
    milter, host = await run(tmp_path, {p.C_BODYEOB: replies})
    try:
        assert (await smtp_send(host, MSG))[0] == 250
        assert await inbox(host) == []
        assert len(await inbox(host, "Junk")) == 1
    finally:
        await stop(milter, host)


@pytest_twisted.ensureDeferred
async def test_progress_keeps_a_slow_milter_alive(tmp_path):
    """eom_timeout 0.5 s; the milter takes 1.2 s, with SMFIR_PROGRESS every 0.3 s."""
    sent = []

    def later(milter):
        proto = milter.last_protocol
        sent.append(1)
        if len(sent) < 4:
            proto.send_all([(p.R_PROGRESS, None)])
            reactor.callLater(0.3, later, milter)
        else:
            proto.send_all([(p.R_ADDHEADER, p.HeaderChange(b"X-Slow", b"yes")),
                            (p.R_CONTINUE, None)])

    def on_eom(milter, data):
        reactor.callLater(0.3, later, milter)
        return []

    milter, host = await run(tmp_path, {p.C_BODYEOB: on_eom}, spec="eom_timeout=0.5")
    try:
        assert (await smtp_send(host, MSG))[0] == 250
        (got,) = await inbox(host)
        assert got["X-Slow"] == "yes"
        # Without progress, the same wait is a timeout: the default action.
        sent.clear()
        milter.script[p.C_BODYEOB] = lambda m, d: (reactor.callLater(1.0, m.last_protocol.send_all,
                                                                     [(p.R_CONTINUE, None)]), [])[1]
        code, _ = await smtp_send(host, MSG)
        assert code == 451
    finally:
        await stop(milter, host)


@pytest_twisted.ensureDeferred
async def test_skip_stops_the_body_and_large_bodies_come_in_chunks(tmp_path):
    body = ("x" * 998 + "\r\n") * 400  # 400 KB: over the spool's memory limit
    data = message("alice@a.test", "bob@b.test", "large", body=body)
    milter, host = await run(tmp_path)
    try:
        assert (await smtp_send(host, data))[0] == 250
        chunks = milter.named(p.C_BODY)
        assert {len(c) for c in chunks[:-1]} == {65535} and len(chunks) == 7
        assert b"".join(chunks) == body.encode()
        # Unanswered body chunks (SMFIP_NR_BODY) all arrive too.
        milter.commands.clear()
        milter.options = p.Options(6, 0, p.P_NR_BODY)
        assert (await smtp_send(host, data))[0] == 250
        assert b"".join(milter.named(p.C_BODY)) == body.encode()
        milter.commands.clear()
        milter.options = p.Options(6, 0, 0)
        milter.script[p.C_BODY] = [(p.R_SKIP, None)]
        assert (await smtp_send(host, data))[0] == 250
        assert len(milter.named(p.C_BODY)) == 1 and milter.named(p.C_BODYEOB)
    finally:
        await stop(milter, host)


@pytest.mark.parametrize("default_action, expected", [("tempfail", 451), ("accept", 250)])
@pytest_twisted.ensureDeferred
async def test_a_milter_that_is_down_follows_the_default_action(tmp_path, default_action, expected):
    milter = await scripted.start()
    port = milter.port
    await milter.stop()  # nothing listens there now
    host = milter_host(tmp_path, {"down": f"inet:{port}@127.0.0.1 connect_timeout=5"},
                       default_action=default_action)
    await host.start()
    try:
        code, text = await smtp_send(host, MSG)
        assert code == expected
        if expected == 451:
            assert text.startswith("4.7.1")
            assert await inbox(host) == []
        else:
            assert len(await inbox(host)) == 1
    finally:
        await host.stop()


@pytest.mark.parametrize("fault", ["timeout", "garbage", "oversized", "close", "shutdown"])
@pytest_twisted.ensureDeferred
async def test_a_broken_milter_follows_its_default_action(tmp_path, fault):
    script = {
        "timeout": {p.C_RCPT: []},
        "garbage": {p.C_HELO: [(b"raw", b"\x00\x00\x00\x02zz")]},
        "oversized": {p.C_HELO: [(b"raw", b"\x7f\xff\xff\xffc")]},
        "close": {p.C_MAIL: [(b"close", None)]},
        "shutdown": {p.C_MAIL: [(p.R_SHUTDOWN, None)]},
    }[fault]
    milter, host = await run(tmp_path, script, spec="command_timeout=0.5")
    try:
        code, text = await smtp_send(host, MSG)
        assert code == 451 and text.startswith("4.7.1")
        # The per-milter default_action wins over milter_default_action.
        await host.stop()
        host = milter_host(tmp_path, {"m": f"inet:{milter.port}@127.0.0.1 command_timeout=0.5 "
                                           "default_action=accept"}, name="b2")
        await host.start()
        assert (await smtp_send(host, MSG))[0] == 250
        assert len(await inbox(host)) == 1
    finally:
        await stop(milter, host)


@pytest_twisted.ensureDeferred
async def test_two_milters_in_order_the_second_sees_the_firsts_edits(tmp_path):
    first = await scripted.start({p.C_BODYEOB: [
        (p.R_ADDHEADER, p.HeaderChange(b"X-First", b"1")), (p.R_CONTINUE, None)]})
    second = await scripted.start()
    host = milter_host(tmp_path, {"one": f"inet:{first.port}@127.0.0.1",
                                  "two": f"inet:{second.port}@127.0.0.1"})
    await host.start()
    try:
        assert (await smtp_send(host, MSG))[0] == 250
        headers = [p.decode_header(h) for h in second.named(p.C_HEADER)]
        assert headers[-1] == (b"X-First", b"1")
        (got,) = await inbox(host)
        assert got["X-First"] == "1"
    finally:
        await host.stop()
        await first.stop()
        await second.stop()



def _aborted_session(host):
    import smtplib

    s = smtplib.SMTP(host.ip, host.port, timeout=30)
    s.ehlo("client.example")
    s.mail("alice@a.test")
    s.rcpt("bob@b.test")
    s.rset()
    s.mail("alice@a.test")
    s.rcpt("bob@b.test")
    s.putcmd("DATA")
    s.getreply()
    s.send(b"Subject: cut\r\n\r\npart of a body")
    s.close()  # the connection drops mid-DATA


@pytest_twisted.ensureDeferred
async def test_rset_and_a_dropped_client_abort_the_milters_transaction(tmp_path):
    """The envelope goes to the milter at SMTP time; a transaction the client
    abandons (RSET, a drop mid-DATA) is aborted (SMFIC_ABORT before the next MAIL,
    SMFIC_QUIT when the connection ends) and its content never reaches the milter."""
    milter, host = await run(tmp_path)
    try:
        await threads.deferToThread(_aborted_session, host)
        await until(lambda: p.C_QUIT in {c for c, _ in milter.commands})
        (seen,) = milter.sessions
        commands = [c for c, _ in seen if c != p.C_MACRO]
        assert commands == [p.C_OPTNEG, p.C_CONNECT, p.C_HELO, p.C_MAIL, p.C_RCPT,
                            p.C_ABORT, p.C_MAIL, p.C_RCPT, p.C_QUIT]
        assert (await smtp_send(host, MSG))[0] == 250
        assert len(milter.sessions) == 2
        assert len(await inbox(host)) == 1
    finally:
        await stop(milter, host)


def _one_session(host, messages, helo2=None):
    """Several transactions on one SMTP connection: the reply code of each."""
    import smtplib

    codes = []
    with smtplib.SMTP(host.ip, host.port, timeout=30) as s:
        s.ehlo("client.example")
        for i, data in enumerate(messages):
            if helo2 and i == 1:
                s.ehlo(helo2)
            try:
                s.sendmail("alice@a.test", ["bob@b.test"], data)
                codes.append(250)
            except smtplib.SMTPResponseException as e:
                codes.append(e.smtp_code)
            except smtplib.SMTPRecipientsRefused as e:
                codes.append(next(iter(e.recipients.values()))[0])
    return codes


@pytest_twisted.ensureDeferred
async def test_one_milter_connection_per_smtp_session(tmp_path):
    """Three messages, the second refused at MAIL (then SMFIC_ABORT), a new EHLO
    name before it: one connection, one OPTNEG and CONNECT, HELO again only when
    it changed, QUIT when the SMTP session ends."""
    milter, host = await run(tmp_path)
    try:
        first, second, third = (message("alice@a.test", "bob@b.test", n) for n in
                                ("first", "second", "third"))
        replies = iter([[(p.R_CONTINUE, None)], [(p.R_REJECT, None)], [(p.R_CONTINUE, None)]])
        milter.script[p.C_MAIL] = lambda m, d: next(replies)
        codes = await threads.deferToThread(_one_session, host, [first, second, third],
                                            "client2.example")
        assert codes == [250, 550, 250]
        await until(lambda: p.C_QUIT in {c for c, _ in milter.commands})
        assert len(milter.sessions) == 1
        commands = [c for c, _ in milter.commands if c != p.C_MACRO]
        assert commands.count(p.C_OPTNEG) == commands.count(p.C_CONNECT) == 1
        assert [p.decode_args(h) for h in milter.named(p.C_HELO)] == [
            [b"client.example"], [b"client2.example"]]
        assert commands.count(p.C_BODYEOB) == 2
        assert commands[commands.index(p.C_MAIL, commands.index(p.C_BODYEOB)) + 1] == p.C_ABORT
        assert len(await inbox(host)) == 2
    finally:
        await stop(milter, host)


@pytest_twisted.ensureDeferred
async def test_a_reject_at_connect_holds_for_the_session_and_a_new_session_asks_again(tmp_path):
    milter, host = await run(tmp_path, {p.C_CONNECT: [(p.R_TEMPFAIL, None)]})
    try:
        msgs = [message("alice@a.test", "bob@b.test", n) for n in ("one", "two")]
        assert await threads.deferToThread(_one_session, host, msgs) == [451, 451]
        assert len(milter.named(p.C_CONNECT)) == 1
        milter.script[p.C_CONNECT] = [(p.R_CONTINUE, None)]
        assert await threads.deferToThread(_one_session, host, msgs) == [250, 250]
        assert len(milter.sessions) == 2
    finally:
        await stop(milter, host)


@pytest_twisted.ensureDeferred
async def test_a_milter_that_closes_between_messages_is_reconnected(tmp_path):
    milter, host = await run(tmp_path, {p.C_BODYEOB: [(p.R_CONTINUE, None), (b"close", None)]})
    try:
        msgs = [message("alice@a.test", "bob@b.test", n) for n in ("one", "two")]
        assert await threads.deferToThread(_one_session, host, msgs) == [250, 250]
        assert len(milter.sessions) == 2
        assert len(await inbox(host)) == 2
    finally:
        await stop(milter, host)


@pytest_twisted.ensureDeferred
async def test_the_milter_gets_the_clients_fcrdns_name(tmp_path, dns_server):
    dns_server.zones.update({
        "1.0.0.127.in-addr.arpa": {"PTR": ["client.sender.test"]},
        "client.sender.test": {"A": ["127.0.0.1"]},
    })
    milter = await scripted.start()
    host = milter_host(tmp_path, {"m": f"inet:{milter.port}@127.0.0.1"}, dns=dns_server.address)
    host.config.smtp.fcrdns = "record"
    await host.start()
    try:
        assert (await smtp_send(host, MSG))[0] == 250
        connect = p.decode_connect(milter.named(p.C_CONNECT)[0])
        assert connect.hostname == b"client.sender.test"
        assert milter.macros()[p.C_CONNECT][b"_"] == b"client.sender.test [127.0.0.1]"
    finally:
        await host.stop()
        await milter.stop()
