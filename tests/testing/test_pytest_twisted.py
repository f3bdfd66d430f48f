"""The ``mailhost`` and ``mailhost_session`` fixtures from pytest-twisted tests."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.testing import clients


@pytest_twisted.ensureDeferred
async def test_send_and_read_back(mailhost):
    await mailhost.add_user("alice@example.test", "secret")
    await threads.deferToThread(clients.smtp_send, mailhost.smtp_port, "alice@example.test",
                                "from pytest-twisted")
    got = await mailhost.wait_for_messages(1)
    assert got[0].subject == "from pytest-twisted"
    assert got[0].user == "alice@example.test"
    assert await threads.deferToThread(clients.imap_subjects, mailhost.imap_port,
                                       "alice@example.test", "secret") == ["from pytest-twisted"]
    assert await threads.deferToThread(clients.pop3_subjects, mailhost.pop3_port,
                                       "alice@example.test", "secret") == ["from pytest-twisted"]
    msgs = await mailhost.messages("alice@example.test")
    assert [m["Subject"] for m in msgs] == ["from pytest-twisted"]


@pytest.mark.mailhost(users={"carol@example.test": "pw"},
                      aliases={"info@example.test": ["carol@example.test"]})
@pytest_twisted.inlineCallbacks
def test_marker_options_and_aliases(mailhost):
    yield threads.deferToThread(clients.smtp_send, mailhost.smtp_port, "info@example.test",
                                "via alias")
    got = yield mailhost.wait_for_messages(1)
    assert (got[0].user, got[0].subject) == ("carol@example.test", "via alias")


@pytest_twisted.ensureDeferred
async def test_wait_for_messages_times_out_clearly(mailhost):
    await mailhost.add_user("alice@example.test", "secret")
    await mailhost.deliver("alice@example.test", "Subject: only one\n\nx\n")
    with pytest.raises(TimeoutError) as info:
        await mailhost.wait_for_messages(2, timeout=0.3)
    assert "1 arrived" in str(info.value) and "only one" in str(info.value)


@pytest_twisted.ensureDeferred
async def test_remote_recipients_refused_by_default(mailhost):
    import smtplib

    await mailhost.add_user("alice@example.test", "secret")

    def send_remote():
        with smtplib.SMTP("127.0.0.1", mailhost.submission_port, timeout=10) as s:
            s.login("alice@example.test", "secret")
            s.sendmail("alice@example.test", ["someone@elsewhere.test"], b"Subject: x\r\n\r\nx\r\n")

    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        await threads.deferToThread(send_remote)
    assert info.value.recipients["someone@elsewhere.test"][0] == 554


@pytest.mark.mailhost(users={"alice@example.test": "secret"}, outbound=True)
@pytest_twisted.ensureDeferred
async def test_outbound_capture(mailhost):
    import smtplib

    def send_remote():
        with smtplib.SMTP("127.0.0.1", mailhost.submission_port, timeout=10) as s:
            s.login("alice@example.test", "secret")
            s.sendmail("alice@example.test", ["someone@elsewhere.test", "alice@example.test"],
                       b"Subject: relayed\r\n\r\nx\r\n")

    await threads.deferToThread(send_remote)
    out = mailhost.outbound_messages()
    assert [(m.sender, m.recipients, m.message["Subject"]) for m in out] == [
        ("alice@example.test", ["someone@elsewhere.test"], "relayed")]
    assert [m.subject for m in await mailhost.wait_for_messages(1)] == ["relayed"]


@pytest_twisted.ensureDeferred
async def test_module_host_with_reset(mailhost_module):
    # (mailhost_session is exercised by docs/examples/test_lifecycle.py in a subprocess:
    # a session host would still run when this suite's trial TestCases do.)
    host = mailhost_module
    await host.add_user("dave@example.test", "pw")
    await host.deliver("dave@example.test", b"Subject: s\r\n\r\nx\r\n")
    assert len(await host.wait_for_messages(1)) == 1
    await host.reset()
    assert host.received == []
    assert "dave@example.test" not in host.users()


@pytest_twisted.ensureDeferred
async def test_module_host_is_shared(mailhost_module):
    assert mailhost_module.running and mailhost_module.received == []
