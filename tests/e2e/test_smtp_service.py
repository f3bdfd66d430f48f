"""SMTP through a real ``twistd mailhost``: inbound, submission with STARTTLS + AUTH, queue."""

from __future__ import annotations

import os
import smtplib
import ssl
import time

from mailhost.tls import write_selfsigned
from tests.mailhost_process import free_port


def _files(path: str) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(path):
        out += [os.path.join(dirpath, f) for f in files]
    return out


def test_inbound_and_submission_through_twistd(mailhost_factory, tmp_path):
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    write_selfsigned("localhost", cert, key)
    proc = mailhost_factory(extra={
        "tls": {"cert": cert, "key": key},
        "server": {"allow_plaintext_auth": "no"},
        # a smarthost on a closed loopback port: remote mail stays queued, never leaves
        "outbound": {"smarthost": f"127.0.0.1:{free_port()}"},
    }).start()

    with smtplib.SMTP("127.0.0.1", proc.ports["smtp"], timeout=20) as s:
        code, ehlo = s.ehlo("e2e.test")
        assert b"STARTTLS" in ehlo and b"AUTH" not in ehlo
        assert s.sendmail("x@far.test", ["alice@example.test"], b"Subject: in\r\n\r\nhi\r\n") == {}
        try:
            s.sendmail("x@far.test", ["y@elsewhere.test"], b"Subject: relay\r\n\r\n")
            raise AssertionError("open relay")
        except smtplib.SMTPRecipientsRefused as e:
            assert e.recipients["y@elsewhere.test"][0] == 554

    ctx = ssl.create_default_context(cafile=cert)
    with smtplib.SMTP("localhost", proc.ports["submission"], timeout=20) as s:
        s.ehlo("laptop")
        assert s.docmd("MAIL FROM:<bob@example.test>")[0] == 530
        s.rset()
        s.starttls(context=ctx)
        s.login("bob@example.test", "bob-pw")
        assert s.sendmail("bob@example.test", ["alice@example.test", "z@elsewhere.test"],
                          b"Subject: out\r\n\r\nsubmitted\r\n") == {}

    new = os.path.join(proc.maildir("alice@example.test"), "new")
    deadline = time.monotonic() + 10
    while len(os.listdir(new)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    bodies = sorted(open(os.path.join(new, f), "rb").read() for f in os.listdir(new))
    assert len(bodies) == 2
    assert any(b"with ESMTPSA id" in b and b"Return-Path: <bob@example.test>" in b
               for b in bodies)
    assert any(b"with ESMTP id" in b and b"Return-Path: <x@far.test>" in b for b in bodies)
    spool = _files(os.path.join(proc.data_dir, "queue"))
    assert spool, "remote recipient was not queued"
    assert any(b"submitted" in open(f, "rb").read() for f in spool)
