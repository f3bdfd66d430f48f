"""Greylisting in a real ``twistd -n mailhost``: the triplet store lives through a
SIGTERM and a new process, and its thread stops with the server."""

from __future__ import annotations

import os
import smtplib
import time

import pytest

DELAY = 2.0


def _send(proc) -> None:
    with smtplib.SMTP("127.0.0.1", proc.ports["smtp"], timeout=30) as s:
        s.ehlo("client.sender.test")
        s.sendmail("news@sender.test", ["alice@example.test"],
                   b"Subject: hello\r\n\r\nHello.\r\n")


def test_greylisting_survives_a_twistd_restart(mailhost_factory):
    proc = mailhost_factory(extra={"greylist": {"enabled": True, "delay": DELAY}})
    proc.start()
    first = time.monotonic()
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        _send(proc)
    code, text = e.value.recipients["alice@example.test"]
    assert code == 451 and text.startswith(b"4.7.1 ")
    proc.stop()
    # twistd ends itself by the signal it got, once the services have stopped (the
    # database's thread among them: a thread left running would hold the exit up)
    assert proc.proc.returncode == -15 and "Server Shut Down." in proc.log()
    proc.start()
    time.sleep(max(0.0, first + DELAY + 0.3 - time.monotonic()))
    _send(proc)  # a forgotten triplet would have been greylisted again
    proc.stop()
    assert proc.proc.returncode == -15
    path = os.path.join(proc.data_dir, "greylist.sqlite")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert "Traceback" not in proc.log()
    new = os.listdir(proc.maildir("alice@example.test") + "/new")
    assert len(new) == 1
