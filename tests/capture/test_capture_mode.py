"""Capture mode (issue 20): every recipient of every domain is stored in a mailbox of
its own, any AUTH succeeds, nothing is relayed; the mail view lists, searches, deletes,
purges and releases it. Real sockets and stdlib clients throughout."""

from __future__ import annotations

import email
import email.policy
import imaplib
import poplib
import smtplib
import threading
from email.message import EmailMessage

import pytest

from mailhost.testing import running

DOMAINS = ["gmail.test", "yahoo.test", "corp.test", "shop.test", "bank.test"]
RECIPIENTS = [f"customer{i}@{DOMAINS[i % 5]}" for i in range(20)]


def newsletter(subject: str, to: list[str], body: str = "Hello from the app") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "App <noreply@app.test>"
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg.set_content(body)
    return msg


def assert_each_recipient_has_its_own_mailbox(host, subject: str, logins=()) -> None:
    host.wait_for_messages(20, timeout=60)
    view = host.mail_view
    # A login opens (so makes) its own, empty, mailbox too.
    assert view.mailboxes() == sorted([*RECIPIENTS, *logins])
    for rcpt in RECIPIENTS:
        (only,) = view.messages(mailbox=rcpt)
        assert only.subject == subject and only.folder == "INBOX"
    assert sorted(m.user for m in host.received) == sorted(RECIPIENTS)
    for domain in DOMAINS:
        got = host.messages_for_domain(domain)
        assert sorted(m.user for m in got) == sorted(r for r in RECIPIENTS if r.endswith(domain))
        assert {m.subject for m in got} == {subject}


@pytest.mark.mailhost(capture=True)
def test_app_without_auth_reaches_20_recipients_at_5_outside_domains(mailhost_sync):
    host = mailhost_sync  # the pytest fixture in capture mode, memory store
    with smtplib.SMTP("127.0.0.1", host.smtp_port, timeout=10) as smtp:
        refused = smtp.send_message(newsletter("Your order", RECIPIENTS))
    assert refused == {}
    assert_each_recipient_has_its_own_mailbox(host, "Your order")
    assert host.outbound_messages() == []


def test_the_same_on_a_maildir_store_with_running(mailhost_sync):
    with running(capture=True, store="maildir") as host:
        with smtplib.SMTP("127.0.0.1", host.smtp_port, timeout=10) as smtp:
            for rcpt in RECIPIENTS:  # one transaction each, as many apps do
                smtp.send_message(newsletter("One by one", [rcpt]))
        assert_each_recipient_has_its_own_mailbox(host, "One by one")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_unknown_user_with_any_password_submits_to_anyone(mailhost_sync, mechanism):
    with running(capture=True, store="maildir") as host:
        with smtplib.SMTP("127.0.0.1", host.submission_port, timeout=10) as smtp:
            smtp.ehlo()
            smtp.login("nobody-we-know@app.test", "any password at all",
                       initial_response_ok=mechanism == "PLAIN")
            assert smtp.does_esmtp and mechanism in smtp.esmtp_features["auth"]
            # Sender check is off: the app sends as whoever it likes.
            refused = smtp.send_message(newsletter("Submitted", RECIPIENTS),
                                        from_addr="billing@elsewhere.test")
        assert refused == {}
        assert_each_recipient_has_its_own_mailbox(host, "Submitted",
                                                  logins=["nobody-we-know@app.test"])
        (first,) = host.mail_view.messages(mailbox=RECIPIENTS[0])
        assert first.sender == "billing@elsewhere.test"


def test_a_name_that_is_not_an_address_logs_in_and_reads_its_mail(mailhost_sync):
    with running(capture=True, domains=["capture.test"]) as host:
        with smtplib.SMTP("127.0.0.1", host.smtp_port, timeout=10) as smtp:
            smtp.sendmail("a@app.test", ["dev@capture.test", "qa@x.test"],
                          newsletter("Read me", ["dev@capture.test"]).as_bytes())
        host.wait_for_messages(2, timeout=60)
        # A recipient reads its mail over IMAP and POP3 with any password.
        imap = imaplib.IMAP4("127.0.0.1", host.imap_port, timeout=10)
        imap.login("qa@x.test", "whatever")
        imap.select("INBOX")
        _, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"Read me" in data[0][1]
        imap.logout()
        pop = poplib.POP3("127.0.0.1", host.pop3_port, timeout=10)
        pop.user("dev")  # no domain: dev@<first domain>
        pop.pass_("x")
        _, lines, _ = pop.retr(1)
        msg = email.message_from_bytes(b"\r\n".join(lines), policy=email.policy.default)
        assert msg["Subject"] == "Read me"
        pop.quit()


def test_addresses_no_mailbox_can_hold_are_refused(mailhost_sync):
    with running(capture=True) as host:
        with smtplib.SMTP("127.0.0.1", host.smtp_port, timeout=10) as smtp:
            smtp.ehlo()
            smtp.mail("a@app.test")
            assert smtp.rcpt("ok@fine.test")[0] == 250
            assert smtp.rcpt("root@localhost")[0] == 550  # one-label domain: no mailbox
            assert smtp.rcpt("a%b@relay.test")[0] == 550  # routing syntax, never relayed
            smtp.rset()


def test_search_delete_purge_through_the_view(mailhost_sync):
    with running(capture=True, store="maildir") as host:
        with smtplib.SMTP("127.0.0.1", host.smtp_port, timeout=10) as smtp:
            for i, rcpt in enumerate(RECIPIENTS[:10]):
                body = f"Your code is {1000 + i}"
                smtp.send_message(newsletter(f"Code {i}", [rcpt], body=body))
        host.wait_for_messages(10, timeout=60)
        view = host.mail_view
        newest = view.messages(limit=3)
        assert len(newest) == 3
        assert newest == view.messages()[:3]  # the same order, cut at the limit
        (hit,) = view.messages(body="code is 1004")
        assert hit.subject == "Code 4" and hit.mailbox == RECIPIENTS[4]
        assert [m.subject for m in view.messages(text="1007")] == ["Code 7"]
        assert [m.subject for m in view.messages(recipient=RECIPIENTS[2])] == ["Code 2"]
        assert len(view.messages(sender="noreply@app")) == 10
        assert view.messages(subject="nope") == []
        assert b"Your code is 1004" in view.raw(hit.id)
        view.delete(hit.id)
        assert view.messages(body="code is 1004") == []
        assert view.purge(domain=DOMAINS[0]) == 2  # customer0, customer5
        assert len(view.messages()) == 7
        assert host.purge() == 7
        assert view.messages() == [] and host.received == []
        # Mailboxes stay after a purge; a reset clears them too.
        assert len(view.mailboxes()) == 10


def test_release_delivers_byte_for_byte_to_a_scripted_server(mailhost_sync):
    from aiosmtpd.controller import Controller

    from tests.mailhost_process import free_port

    got: list[tuple[str, list[str], bytes]] = []
    arrived = threading.Event()

    class Sink:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            got.append((envelope.mail_from, list(envelope.rcpt_tos),
                        envelope.original_content))
            arrived.set()
            return "250 2.0.0 Ok: kept"

    port = free_port()
    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with running(capture=True, store="maildir") as host:
            original = newsletter("Release me", ["customer@gmail.test"],
                                  body=".dot first\n" + "a line\n" * 5000).as_bytes()
            original = original.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            with smtplib.SMTP("127.0.0.1", host.smtp_port, timeout=10) as smtp:
                smtp.sendmail("noreply@app.test", ["customer@gmail.test"], original)
            host.wait_for_messages(1, timeout=60)
            view = host.mail_view
            (summary,) = view.messages()
            view.release(summary.id, f"tcp:host=127.0.0.1:port={port}")
            assert arrived.wait(10)
            stored = view.raw(summary.id)
    finally:
        controller.stop()
    sender, rcpts, data = got[0]
    assert (sender, rcpts) == ("noreply@app.test", ["customer@gmail.test"])
    # Exactly the stored message, less the Return-Path final delivery added.
    assert stored.startswith(b"Return-Path: <noreply@app.test>\r\n")
    assert data == stored[stored.index(b"\r\n") + 2:]
    assert data.endswith(original)  # after our Received: line, the app's bytes as sent
