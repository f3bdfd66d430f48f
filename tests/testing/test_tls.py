"""TLS listeners (implicit and STARTTLS) verified against the host's ``ca_file``."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import ssl

import pytest

from tests.testing import clients

pytestmark = pytest.mark.mailhost(users={"alice@example.test": "secret"}, tls=True)

MSG = b"Subject: %s\r\n\r\nover tls\r\n"


def test_implicit_tls_everywhere(mailhost_sync):
    ctx = clients.tls_context(mailhost_sync.ca_file)
    with smtplib.SMTP_SSL("127.0.0.1", mailhost_sync.smtps_port, context=ctx, timeout=10) as s:
        s.login("alice@example.test", "secret")
        s.sendmail("alice@example.test", ["alice@example.test"], MSG % b"smtps")
    assert [m.subject for m in mailhost_sync.wait_for_messages(1)] == ["smtps"]

    p = poplib.POP3_SSL("127.0.0.1", mailhost_sync.pop3s_port, context=ctx, timeout=10)
    try:
        p.user("alice@example.test")
        p.pass_("secret")
        assert b"Subject: smtps" in b"\r\n".join(p.retr(1)[1])
    finally:
        p.quit()

    m = imaplib.IMAP4_SSL("127.0.0.1", mailhost_sync.imaps_port, ssl_context=ctx, timeout=10)
    try:
        m.login("alice@example.test", "secret")
        m.select("INBOX")
        assert clients._imap_subjects(m) == ["smtps"]
    finally:
        m.logout()


def test_starttls_everywhere(mailhost_sync):
    ctx = clients.tls_context(mailhost_sync.ca_file)
    with smtplib.SMTP("127.0.0.1", mailhost_sync.submission_port, timeout=10) as s:
        s.starttls(context=ctx)
        s.login("alice@example.test", "secret")
        s.sendmail("alice@example.test", ["alice@example.test"], MSG % b"starttls")
    assert [m.subject for m in mailhost_sync.wait_for_messages(1)] == ["starttls"]

    p = poplib.POP3("127.0.0.1", mailhost_sync.pop3_port, timeout=10)
    try:
        p.stls(context=ctx)
        p.user("alice@example.test")
        p.pass_("secret")
        assert p.stat()[0] == 1
    finally:
        p.quit()

    m = imaplib.IMAP4("127.0.0.1", mailhost_sync.imap_port, timeout=10)
    try:
        m.starttls(ssl_context=ctx)
        m.login("alice@example.test", "secret")
        m.select("INBOX")
        assert clients._imap_subjects(m) == ["starttls"]
    finally:
        m.logout()


def test_verification_fails_without_the_ca(mailhost_sync):
    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL("127.0.0.1", mailhost_sync.smtps_port,
                         context=ssl.create_default_context(), timeout=10)


def test_faults_see_plaintext_inside_tls(mailhost_sync):
    ctx = clients.tls_context(mailhost_sync.ca_file)
    mailhost_sync.smtp.fail("RCPT", code=451, message="4.3.0 over tls")
    mailhost_sync.imap.fail("SELECT", message="nope")
    with smtplib.SMTP_SSL("127.0.0.1", mailhost_sync.smtps_port, context=ctx, timeout=10) as s:
        s.login("alice@example.test", "secret")
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("alice@example.test", ["alice@example.test"], MSG % b"x")
    m = imaplib.IMAP4("127.0.0.1", mailhost_sync.imap_port, timeout=10)
    try:
        m.starttls(ssl_context=ctx)
        m.login("alice@example.test", "secret")
        assert m.select("INBOX") == ("NO", [b"nope"])
    finally:
        m.logout()
