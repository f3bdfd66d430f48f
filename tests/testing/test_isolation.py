"""Two hosts at once stay apart; reset() leaves nothing behind; the Maildir variant."""

from __future__ import annotations

import imaplib
import os
import poplib

import pytest

from mailhost.testing import running
from tests.testing import clients

USERS = {"alice@example.test": "secret"}


def test_two_hosts_do_not_see_each_others_mail(mailhost_sync):
    mailhost_sync.add_user("alice@example.test", "secret")
    with running(users=USERS) as other:
        assert other.smtp_port != mailhost_sync.smtp_port
        clients.smtp_send(other.smtp_port, "alice@example.test", "for other")
        clients.smtp_send(mailhost_sync.smtp_port, "alice@example.test", "for first")
        assert [m.subject for m in other.wait_for_messages(1)] == ["for other"]
        assert [m.subject for m in mailhost_sync.wait_for_messages(1)] == ["for first"]
        assert clients.imap_subjects(other.imap_port, "alice@example.test",
                                     "secret") == ["for other"]
        assert clients.pop3_subjects(mailhost_sync.pop3_port, "alice@example.test",
                                     "secret") == ["for first"]
        other.smtp.fail("RCPT", times=None)
        clients.smtp_send(mailhost_sync.smtp_port, "alice@example.test", "faults are per host")
        assert len(mailhost_sync.wait_for_messages(2)) == 2


@pytest.mark.mailhost(users=USERS)
def test_reset_leaves_nothing(mailhost_sync):
    host = mailhost_sync
    host.add_user("extra@example.test", "pw")
    clients.smtp_send(host.smtp_port, "alice@example.test", "inbox mail")
    host.deliver("extra@example.test", "Subject: extra\n\nx\n")
    m = imaplib.IMAP4("127.0.0.1", host.imap_port, timeout=10)
    m.login("alice@example.test", "secret")
    assert m.create("Projects.2026")[0] == "OK"
    assert m.append("Sent", None, None, b"Subject: sent\r\n\r\nx\r\n")[0] == "OK"
    m.logout()
    # A POP3 session left open holds the maildrop lock; reset must end it.
    p = poplib.POP3("127.0.0.1", host.pop3_port, timeout=10)
    p.user("alice@example.test")
    p.pass_("secret")
    host.smtp.fail("MAIL", times=None)
    host.wait_for_messages(2)

    host.reset()

    assert host.received == []
    assert host.faults() == []
    assert host.users() == ["alice@example.test"]
    assert host.messages("alice@example.test") == []
    assert host.messages("alice@example.test", "Sent") == []
    with pytest.raises(KeyError):
        host.messages("extra@example.test")
    with pytest.raises((poplib.error_proto, OSError)):
        p.stat()  # the old session was cut
    p.close()
    m = imaplib.IMAP4("127.0.0.1", host.imap_port, timeout=10)
    m.login("alice@example.test", "secret")
    typ, folders = m.list()
    m.logout()
    assert not any(b"Projects" in f for f in folders)
    # And the host still works afterwards, with the original password.
    clients.smtp_send(host.smtp_port, "alice@example.test", "after reset")
    assert [m.subject for m in host.wait_for_messages(1)] == ["after reset"]
    assert clients.pop3_subjects(host.pop3_port, "alice@example.test",
                                 "secret") == ["after reset"]


@pytest.mark.mailhost(users=USERS, store="maildir")
def test_maildir_store(mailhost_sync):
    clients.smtp_send(mailhost_sync.smtp_port, "alice@example.test", "on disk")
    got = mailhost_sync.wait_for_messages(1)
    assert got[0].subject == "on disk"
    assert clients.imap_subjects(mailhost_sync.imap_port, "alice@example.test",
                                 "secret") == ["on disk"]
    assert clients.pop3_subjects(mailhost_sync.pop3_port, "alice@example.test",
                                 "secret") == ["on disk"]
    store_root = mailhost_sync._host.store
    assert store_root is not None and type(store_root).__name__ == "MaildirStore"
    tmp = mailhost_sync._host._tmpdir
    assert tmp and os.path.isdir(os.path.join(tmp, "mail"))
