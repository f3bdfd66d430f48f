# test_welcome_trial.py: trial, with MailHostTestMixin (Twisted API, Deferreds)
import smtplib
import ssl

from twisted.internet import threads
from twisted.trial import unittest

from mailhost.testing.trial import MailHostTestMixin


def send_welcome(port, to):
    """The code under test: a blocking SMTP client, as in most applications."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("app@example.test", [to], b"Subject: Welcome\r\n\r\nHello!\r\n")


def submit(port, ca_file):
    """Submission as a mail client does it: STARTTLS, verified, then AUTH."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=ca_file))
        smtp.login("alice@example.test", "secret")
        smtp.sendmail("alice@example.test", ["alice@example.test"],
                      b"Subject: Sent over TLS\r\n\r\nHello!\r\n")


class WelcomeTests(MailHostTestMixin, unittest.TestCase):
    mailhost_options = {"users": {"alice@example.test": "secret"}, "tls": True}

    async def test_welcome_mail_arrives(self):
        # self.mailhost is started before each test and stopped after it.
        await threads.deferToThread(send_welcome, self.mailhost.smtp_port,
                                    "alice@example.test")
        [msg] = await self.mailhost.wait_for_messages(1)
        self.assertEqual(msg.subject, "Welcome")
        self.assertEqual(msg.sender, "app@example.test")

    async def test_retry_on_greylisting(self):
        self.mailhost.smtp.fail("RCPT", code=451, message="4.7.1 greylisted", times=1)
        with self.assertRaises(smtplib.SMTPRecipientsRefused):
            await threads.deferToThread(send_welcome, self.mailhost.smtp_port,
                                        "alice@example.test")
        await threads.deferToThread(send_welcome, self.mailhost.smtp_port,
                                    "alice@example.test")
        self.assertEqual(len(await self.mailhost.wait_for_messages(1)), 1)

    async def test_submission_over_starttls(self):
        await threads.deferToThread(submit, self.mailhost.submission_port,
                                    self.mailhost.ca_file)
        [msg] = await self.mailhost.wait_for_messages(1)
        self.assertEqual(msg.subject, "Sent over TLS")
