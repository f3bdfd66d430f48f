# test_welcome_unittest.py: plain unittest (also Django's SimpleTestCase), blocking
import smtplib
import unittest

from mailhost.testing.unittest import SyncMailHostTestMixin


def send_welcome(port, to):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("app@example.test", [to], b"Subject: Welcome\r\n\r\nHello!\r\n")


class WelcomeTests(SyncMailHostTestMixin, unittest.TestCase):
    mailhost_options = {"users": {"alice@example.test": "secret"}}

    def test_welcome(self):
        # self.mailhost is a started SyncMailHost, stopped after each test.
        send_welcome(self.mailhost.smtp_port, "alice@example.test")
        [msg] = self.mailhost.wait_for_messages(1)
        self.assertEqual(msg.subject, "Welcome")

    def test_unknown_user_is_refused(self):
        with self.assertRaises(smtplib.SMTPRecipientsRefused):
            send_welcome(self.mailhost.smtp_port, "nobody@example.test")
        self.assertEqual(self.mailhost.received, [])


if __name__ == "__main__":
    unittest.main()
