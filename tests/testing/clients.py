"""Blocking stdlib clients used by the mailhost.testing tests (run them in a thread)."""

from __future__ import annotations

import email
import email.policy
import imaplib
import poplib
import smtplib
import ssl

TIMEOUT = 10


def message(subject: str, to: str = "alice@example.test", sender: str = "bob@remote.test",
            body: str = "hello\r\n") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n{body}").encode()


def smtp_send(port: int, to: str | list[str], subject: str = "hi",
              sender: str = "bob@remote.test") -> dict:
    rcpts = [to] if isinstance(to, str) else to
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as s:
        return s.sendmail(sender, rcpts, message(subject, rcpts[0], sender))


def pop3_subjects(port: int, user: str, password: str, delete: bool = False) -> list[str]:
    p = poplib.POP3("127.0.0.1", port, timeout=TIMEOUT)
    try:
        p.user(user)
        p.pass_(password)
        count, _size = p.stat()
        out = []
        for i in range(1, count + 1):
            _resp, lines, _octets = p.retr(i)
            msg = email.message_from_bytes(b"\r\n".join(lines), policy=email.policy.default)
            out.append(msg["Subject"])
            if delete:
                p.dele(i)
        return out
    finally:
        p.quit()


def imap_subjects(port: int, user: str, password: str) -> list[str]:
    m = imaplib.IMAP4("127.0.0.1", port, timeout=TIMEOUT)
    try:
        m.login(user, password)
        m.select("INBOX")
        return _imap_subjects(m)
    finally:
        m.logout()


def _imap_subjects(m: imaplib.IMAP4) -> list[str]:
    typ, data = m.search(None, "ALL")
    assert typ == "OK"
    out = []
    for num in data[0].split():
        typ, parts = m.fetch(num, "(BODY.PEEK[])")
        msg = email.message_from_bytes(parts[0][1], policy=email.policy.default)
        out.append(msg["Subject"])
    return out


def tls_context(ca_file: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)
