"""MailHostTestMixin from a trial TestCase (also run by ``python -m twisted.trial``)."""

from __future__ import annotations

from twisted.internet import threads
from twisted.trial import unittest

from mailhost.testing.trial import MailHostTestMixin, start_mailhost
from tests.testing import clients


class MixinTests(MailHostTestMixin, unittest.TestCase):
    mailhost_options = {"users": {"alice@example.test": "secret"}}

    async def test_send_and_read_back(self):
        host = self.mailhost
        await threads.deferToThread(clients.smtp_send, host.smtp_port,
                                    "alice@example.test", "from trial")
        got = await host.wait_for_messages(1)
        self.assertEqual([m.subject for m in got], ["from trial"])
        self.assertEqual(got[0].sender, "bob@remote.test")
        imap = await threads.deferToThread(clients.imap_subjects, host.imap_port,
                                           "alice@example.test", "secret")
        self.assertEqual(imap, ["from trial"])
        pop = await threads.deferToThread(clients.pop3_subjects, host.pop3_port,
                                          "alice@example.test", "secret")
        self.assertEqual(pop, ["from trial"])

    async def test_each_test_gets_a_fresh_host(self):
        self.assertEqual(self.mailhost.received, [])
        msgs = await self.mailhost.messages("alice@example.test")
        self.assertEqual(msgs, [])


class HelperTests(unittest.TestCase):
    # No mixin and no marker: the pytest plugin hands the reactor to every trial TestCase.

    async def test_start_mailhost_helper(self):
        host = await start_mailhost(self, users={"bob@example.test": "pw"})
        await host.deliver("bob@example.test", b"Subject: preloaded\r\n\r\nx\r\n")
        subjects = await threads.deferToThread(clients.pop3_subjects, host.pop3_port,
                                               "bob@example.test", "pw")
        self.assertEqual(subjects, ["preloaded"])
