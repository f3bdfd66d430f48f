"""The milter's envelope at SMTP time, as Postfix's ``smtpd_milters``: over real SMTP
(smtplib) into a real mail host, against the scripted milter on loopback. A milter
that refuses one recipient refuses that RCPT only; a refusal at MAIL FROM is MAIL's
answer."""

from __future__ import annotations

import smtplib

import pytest_twisted
from twisted.internet import task, threads

from mailhost.milter import protocol as p
from tests.milter import scripted
from tests.milter.hosts import message, milter_host

USERS = {"bob@b.test": "pw", "carol@b.test": "pw", "dave@b.test": "pw"}
RCPTS = ["bob@b.test", "carol@b.test", "dave@b.test"]


def _transaction(host, rcpts):
    """MAIL, each RCPT, DATA if any was taken: every reply as (code, text)."""
    replies = {}
    with smtplib.SMTP(host.ip, host.port, timeout=60) as s:
        s.ehlo("client.example")
        code, text = s.mail("alice@a.test")
        replies["MAIL"] = (code, text.decode())
        if code != 250:
            return replies
        for rcpt in rcpts:
            code, text = s.rcpt(rcpt)
            replies[rcpt] = (code, text.decode())
        if any(replies[r][0] == 250 for r in rcpts):
            code, text = s.data(message("alice@a.test", ", ".join(rcpts), "envelope"))
            replies["DATA"] = (code, text.decode())
    return replies


def _refusing(address: bytes, reply):
    """A RCPT script: ``reply`` for ``address``, continue for the others."""
    def answer(milter, payload):
        return reply if p.decode_args(payload)[0] == address else [(p.R_CONTINUE, None)]
    return answer


async def _run(tmp_path, script):
    milter = await scripted.start(script)
    host = milter_host(tmp_path, {"scripted": f"inet:{milter.port}@127.0.0.1"}, users=USERS)
    await host.start()
    return milter, host


async def _delivered(host):
    return {user: len(await host.folder(user)) for user in RCPTS}


@pytest_twisted.ensureDeferred
async def test_a_milter_rejecting_one_of_three_recipients_refuses_that_rcpt_only(tmp_path):
    reply = [(p.R_REPLYCODE, (550, "5.7.1", "Carol takes no mail from you"))]
    milter, host = await _run(tmp_path, {p.C_RCPT: _refusing(b"<carol@b.test>", reply)})
    try:
        replies = await threads.deferToThread(_transaction, host, RCPTS)
        assert replies["carol@b.test"] == (550, "5.7.1 Carol takes no mail from you")
        assert replies["bob@b.test"][0] == replies["dave@b.test"][0] == 250
        assert replies["DATA"][0] == 250
        assert await _delivered(host) == {"bob@b.test": 1, "carol@b.test": 0, "dave@b.test": 1}
        # The milter heard each RCPT as it came, and the message went on after it.
        commands = [c for c, _ in milter.commands if c != p.C_MACRO]
        assert commands[3:8] == [p.C_MAIL, p.C_RCPT, p.C_RCPT, p.C_RCPT, p.C_DATA]
        assert p.C_BODYEOB in commands and p.C_ABORT not in commands
    finally:
        await host.stop()
        await milter.stop()


@pytest_twisted.ensureDeferred
async def test_a_plain_reject_or_tempfail_of_one_recipient_is_550_or_451(tmp_path):
    """Postfix's replies for a bare SMFIR_REJECT / SMFIR_TEMPFAIL (milter8.c):
    ``550 5.7.1 Command rejected`` and ``451 4.7.1 Service unavailable - try again
    later``, for that recipient alone."""
    milter, host = await _run(tmp_path, {p.C_RCPT: _refusing(b"<dave@b.test>",
                                                             [(p.R_TEMPFAIL, None)])})
    try:
        replies = await threads.deferToThread(_transaction, host, RCPTS)
        code, text = replies["dave@b.test"]
        assert (code, text) == (451, "4.7.1 Service unavailable - try again later")
        assert replies["bob@b.test"][0] == replies["carol@b.test"][0] == 250
        assert await _delivered(host) == {"bob@b.test": 1, "carol@b.test": 1, "dave@b.test": 0}
        milter.script[p.C_RCPT] = _refusing(b"<bob@b.test>", [(p.R_REJECT, None)])
        replies = await threads.deferToThread(_transaction, host, RCPTS)
        code, text = replies["bob@b.test"]
        assert (code, text) == (550, "5.7.1 Command rejected")
        assert await _delivered(host) == {"bob@b.test": 1, "carol@b.test": 2, "dave@b.test": 1}
    finally:
        await host.stop()
        await milter.stop()


@pytest_twisted.ensureDeferred
async def test_a_replycode_tempfail_of_one_recipient_keeps_the_milters_code(tmp_path):
    reply = [(p.R_REPLYCODE, (450, "4.2.1", "Mailbox busy, try later"))]
    milter, host = await _run(tmp_path, {p.C_RCPT: _refusing(b"<bob@b.test>", reply)})
    try:
        replies = await threads.deferToThread(_transaction, host, RCPTS)
        assert replies["bob@b.test"] == (450, "4.2.1 Mailbox busy, try later")
        assert replies["DATA"][0] == 250
    finally:
        await host.stop()
        await milter.stop()


@pytest_twisted.ensureDeferred
async def test_a_reject_at_mail_from_is_the_answer_to_mail(tmp_path):
    reply = [(p.R_REPLYCODE, (553, "5.7.1", "Sender blocked"))]
    milter, host = await _run(tmp_path, {p.C_MAIL: reply})
    try:
        replies = await threads.deferToThread(_transaction, host, RCPTS)
        assert replies == {"MAIL": (553, "5.7.1 Sender blocked")}
        from twisted.internet import reactor

        for _ in range(100):  # the abort travels after the client's last reply: wait, bounded
            if any(c == p.C_ABORT for c, _ in milter.commands):
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        commands = [c for c, _ in milter.commands if c != p.C_MACRO]
        assert commands[3:] == [p.C_MAIL, p.C_ABORT] or commands[3:] == [
            p.C_MAIL, p.C_ABORT, p.C_QUIT]
        assert await _delivered(host) == {"bob@b.test": 0, "carol@b.test": 0, "dave@b.test": 0}
    finally:
        await host.stop()
        await milter.stop()


@pytest_twisted.ensureDeferred
async def test_a_reject_at_helo_is_answered_at_mail_for_the_whole_session(tmp_path):
    milter, host = await _run(tmp_path, {p.C_HELO: [(p.R_REPLYCODE, (554, "5.7.1", "Bad HELO"))]})
    try:
        replies = await threads.deferToThread(_transaction, host, RCPTS)
        assert replies == {"MAIL": (554, "5.7.1 Bad HELO")}
        assert p.C_MAIL not in {c for c, _ in milter.commands}
    finally:
        await host.stop()
        await milter.stop()


@pytest_twisted.ensureDeferred
async def test_a_milter_down_at_rcpt_time_follows_the_default_action_there(tmp_path):
    """The milter closes the connection at the second RCPT: that RCPT gets the
    default action's 451, and so does every later one of the transaction."""
    seen = []

    def close_on_carol(milter, payload):
        seen.append(payload)
        if p.decode_args(payload)[0] == b"<carol@b.test>":
            return [(b"close", None)]
        return [(p.R_CONTINUE, None)]

    milter, host = await _run(tmp_path, {p.C_RCPT: close_on_carol})
    try:
        replies = await threads.deferToThread(_transaction, host, RCPTS)
        assert replies["bob@b.test"][0] == 250
        assert replies["carol@b.test"][0] == replies["dave@b.test"][0] == 451
        assert replies["DATA"][0] == 451  # the milter's default action: tempfail
        assert len(seen) == 2
    finally:
        await host.stop()
        await milter.stop()


def test_the_milter_stage_is_an_envelope_check_too():
    from zope.interface.verify import verifyObject

    from mailhost.message.checks import EnvelopeChecks, IEnvelopeCheck
    from mailhost.message.stage import ISessionStage
    from mailhost.milter.client import MilterClient, MilterSpec
    from mailhost.pipeline.milter import MilterStage

    stage = MilterStage([MilterClient(MilterSpec("m", "tcp:host=127.0.0.1:port=9"), "mx.test")])
    assert verifyObject(IEnvelopeCheck, stage) and verifyObject(ISessionStage, stage)
    checks = EnvelopeChecks(())
    assert checks.joined([object(), stage]).checks == (stage,)
    assert checks.joined([object()]) is checks
