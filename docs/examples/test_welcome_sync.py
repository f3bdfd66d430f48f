# test_welcome_sync.py: pytest, blocking (with or without pytest-twisted)
import imaplib
import smtplib
import ssl
import time

import pytest


def send_welcome(port, to):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("app@example.test", [to], b"Subject: Welcome\r\n\r\nHello!\r\n")


@pytest.mark.mailhost(users={"alice@example.test": "secret"})
def test_welcome(mailhost_sync):
    send_welcome(mailhost_sync.smtp_port, "alice@example.test")
    [msg] = mailhost_sync.wait_for_messages(1)
    assert msg.subject == "Welcome"

    imap = imaplib.IMAP4("127.0.0.1", mailhost_sync.imap_port, timeout=10)
    imap.login("alice@example.test", "secret")
    imap.select("INBOX")
    assert imap.search(None, "ALL")[1] == [b"1"]
    imap.logout()


def test_slow_server(mailhost_sync):
    mailhost_sync.smtp.delay("greeting", 1.0)
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", mailhost_sync.smtp_port, timeout=10) as smtp:
        assert smtp.noop()[0] == 250
    assert time.monotonic() - started >= 0.9


@pytest.mark.mailhost(users={"alice@example.test": "secret"}, tls=True)
def test_starttls_everywhere(mailhost_sync):
    ctx = ssl.create_default_context(cafile=mailhost_sync.ca_file)
    with smtplib.SMTP("127.0.0.1", mailhost_sync.submission_port, timeout=10) as smtp:
        smtp.starttls(context=ctx)
        smtp.login("alice@example.test", "secret")
        smtp.sendmail("alice@example.test", ["alice@example.test"],
                      b"Subject: over TLS\r\n\r\nHello!\r\n")
    assert [m.subject for m in mailhost_sync.wait_for_messages(1)] == ["over TLS"]
    imap = imaplib.IMAP4("127.0.0.1", mailhost_sync.imap_port, timeout=10)
    imap.starttls(ssl_context=ctx)
    imap.login("alice@example.test", "secret")
    assert imap.select("INBOX") == ("OK", [b"1"])
    imap.logout()
