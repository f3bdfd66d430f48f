"""Structured logs: JSON lines with stable fields, and never a password or AUTH payload."""

from __future__ import annotations

import base64
import imaplib
import json
import poplib
import smtplib

import pytest

SECRET = "Sup3r-Secret-Pw"


def test_json_log_has_events_and_no_secrets(mailhost_factory):
    mh = mailhost_factory(users={"alice@example.test": SECRET},
                          extra={"server": {"log_format": "json"}})
    mh.start()
    with smtplib.SMTP("127.0.0.1", mh.ports["submission"], timeout=30) as s:
        s.ehlo()
        s.login("alice@example.test", SECRET)
        s.sendmail("alice@example.test", ["alice@example.test"], b"Subject: j\r\n\r\nx\r\n")
    with smtplib.SMTP("127.0.0.1", mh.ports["submission"], timeout=30) as s:
        s.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("alice@example.test", SECRET + "-wrong")
    pop = poplib.POP3("127.0.0.1", mh.ports["pop3"], timeout=30)
    pop.user("alice@example.test")
    pop.pass_(SECRET)
    pop.quit()
    imap = imaplib.IMAP4("127.0.0.1", mh.ports["imap"], timeout=30)
    imap.login("alice@example.test", SECRET)
    imap.logout()
    mh.stop()

    with open(mh.log_path, "rb") as f:
        raw = f.read()
    plain_b64 = base64.b64encode(f"\0alice@example.test\0{SECRET}".encode())
    for needle in (SECRET.encode(), plain_b64, base64.b64encode(SECRET.encode())):
        assert needle not in raw, f"secret {needle!r} leaked into the log"

    events = [json.loads(line) for line in raw.decode().splitlines() if line.startswith("{")]
    assert events, "no JSON lines in the log"
    by_kind: dict[str, list[dict]] = {}
    for e in events:
        if "event" in e:
            by_kind.setdefault(e["event"], []).append(e)
    logins = by_kind["login"]
    assert {(e["protocol"], e["outcome"]) for e in logins} >= {
        ("smtp", "ok"), ("smtp", "failed"), ("pop3", "ok"), ("imap", "ok")}
    assert all(e["client"] == "127.0.0.1" and e["user"] == "alice@example.test" for e in logins)
    txn = by_kind["smtp.transaction"][0]
    for key in ("tid", "client", "helo", "sender", "recipients", "size", "outcome"):
        assert key in txn, key
    assert by_kind["pop3_session_end"] and by_kind["imap_session_end"]
