"""postmaster always exists (RFC 5321 4.5.1; issue 17, item 13).

Before the fix, a site whose users were added before the first start (so the
first-start bootstrap made no postmaster user) answered ``550 5.1.1`` to
``RCPT TO:<postmaster>`` and ``<postmaster@domain>``. Now postmaster of every local
domain, and the bare ``<postmaster>``, reach ``auth.postmaster`` or, by default,
``postmaster@<first domain>`` if it is a user, else the first user of the passwd file.
An alias or user named postmaster still wins.
"""

from __future__ import annotations

import os
import smtplib
import time

import pytest

from tests.mailhost_process import MailHostProcess

DOMAINS = ["example.test", "second.test"]


def host_with(tmp_path_factory, name: str, **auth):
    h = MailHostProcess(str(tmp_path_factory.mktemp(name)), domains=DOMAINS,
                        extra={"auth": auth} if auth else {})
    return h.start()


@pytest.fixture(scope="module")
def default_host(tmp_path_factory):
    h = host_with(tmp_path_factory, "pm-default")
    yield h
    h.kill()


@pytest.fixture(scope="module")
def configured_host(tmp_path_factory):
    h = host_with(tmp_path_factory, "pm-configured", postmaster="bob@example.test")
    yield h
    h.kill()


def delivered(h: MailHostProcess, user: str, subject: str) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for sub in ("new", "cur"):
            d = os.path.join(h.maildir(user), sub)
            for name in os.listdir(d) if os.path.isdir(d) else []:
                with open(os.path.join(d, name), "rb") as f:
                    if subject.encode() in f.read():
                        return True
        time.sleep(0.1)
    return False


def send(h: MailHostProcess, rcpt: str, subject: str) -> None:
    with smtplib.SMTP(h.host, h.ports["smtp"], timeout=30) as s:
        s.ehlo("client.example")
        s.sendmail("someone@remote.test", [rcpt],
                   f"From: someone@remote.test\r\nSubject: {subject}\r\n\r\nhi\r\n")


@pytest.mark.parametrize("rcpt", ["postmaster", "postmaster@example.test",
                                  "Postmaster@second.test", "POSTMASTER@EXAMPLE.TEST"])
def test_postmaster_reaches_the_first_user_by_default(default_host, rcpt):
    subject = f"to {rcpt} {time.monotonic()}"
    send(default_host, rcpt, subject)
    assert delivered(default_host, "alice@example.test", subject)


@pytest.mark.parametrize("rcpt", ["postmaster", "postmaster@second.test"])
def test_postmaster_reaches_the_configured_mailbox(configured_host, rcpt):
    subject = f"to {rcpt} {time.monotonic()}"
    send(configured_host, rcpt, subject)
    assert delivered(configured_host, "bob@example.test", subject)


def test_postmaster_of_a_foreign_domain_is_not_ours(default_host):
    with smtplib.SMTP(default_host.host, default_host.ports["smtp"], timeout=30) as s:
        s.ehlo("client.example")
        s.mail("someone@remote.test")
        code, _ = s.rcpt("postmaster@elsewhere.test")
    assert code == 554
