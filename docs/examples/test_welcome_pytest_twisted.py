# test_welcome_pytest_twisted.py: pytest with pytest-twisted (Twisted API, Deferreds)
import smtplib

import pytest
import pytest_twisted
from twisted.internet import threads


def send_welcome(port, to):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("app@example.test", [to], b"Subject: Welcome\r\n\r\nHello!\r\n")


@pytest.mark.mailhost(users={"alice@example.test": "secret"})
@pytest_twisted.ensureDeferred
async def test_welcome(mailhost):
    await threads.deferToThread(send_welcome, mailhost.smtp_port, "alice@example.test")
    [msg] = await mailhost.wait_for_messages(1)
    assert msg.subject == "Welcome"
    inbox = await mailhost.messages("alice@example.test")
    assert inbox[0]["Subject"] == "Welcome"


@pytest_twisted.ensureDeferred
async def test_dropped_connection(mailhost):
    await mailhost.add_user("bob@example.test", "pw")
    mailhost.smtp.drop_after("DATA")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        await threads.deferToThread(send_welcome, mailhost.smtp_port, "bob@example.test")
    assert await mailhost.messages("bob@example.test") == []
