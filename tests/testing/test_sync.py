"""Threaded mode: plain synchronous tests, no Twisted in the test body."""

from __future__ import annotations

import pytest

from mailhost.testing import running
from tests.testing import clients


def test_sync_fixture_send_and_read_back(mailhost_sync):
    mailhost_sync.add_user("alice@example.test", "secret")
    clients.smtp_send(mailhost_sync.smtp_port, "alice@example.test", "from sync")
    got = mailhost_sync.wait_for_messages(1)
    assert got[0].subject == "from sync"
    assert clients.imap_subjects(mailhost_sync.imap_port, "alice@example.test",
                                 "secret") == ["from sync"]
    assert clients.pop3_subjects(mailhost_sync.pop3_port, "alice@example.test",
                                 "secret") == ["from sync"]
    assert [m["Subject"] for m in mailhost_sync.messages("alice@example.test")] == ["from sync"]


@pytest.mark.mailhost(users={"alice@example.test": "secret"})
def test_running_is_reenterable(mailhost_sync):
    # mailhost_sync makes the body run off the reactor thread; running() reuses the reactor.
    for i in range(3):
        with running(users={"bob@example.test": "pw"}) as host:
            clients.smtp_send(host.smtp_port, "bob@example.test", f"round {i}")
            assert [m.subject for m in host.wait_for_messages(1)] == [f"round {i}"]
            host.smtp.fail("RCPT", code=451, message="4.3.0 later")
            assert len(host.faults()) == 1
    assert mailhost_sync.received == []  # the other hosts saw nothing of it
