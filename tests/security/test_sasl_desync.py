"""An overlong line inside a SASL exchange ends the exchange (issue 17, item 4).

Before the fix, SMTP answered ``AUTH LOGIN`` + a 5,000-byte line with ``500 5.5.2 line
too long`` but kept waiting for the username, so the next ``MAIL FROM`` was decoded as
the username and answered with a ``334`` password prompt. Every SASL sub-state (SMTP
AUTH LOGIN and PLAIN continuations, POP3 AUTH PLAIN, IMAP AUTHENTICATE) must end on an
overlong line, with exactly one reply, and the next line must be a command again.
BDAT has no line sub-state (its chunk is counted in octets), so it has nothing to end.
"""

from __future__ import annotations

import base64

import pytest

from tests.mailhost_process import MailHostProcess
from tests.security.wire import Wire

LONG = b"A" * 5000


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    # Plaintext AUTH from loopback (the MailHostProcess default), no throttling.
    h = MailHostProcess(str(tmp_path_factory.mktemp("sasl")),
                        extra={"auth": {"max_failures": 0}})
    h.start()
    yield h
    h.kill()


@pytest.mark.parametrize("auth", [
    [b"AUTH LOGIN"],
    [b"AUTH PLAIN"],
    [b"AUTH LOGIN " + base64.b64encode(b"alice@example.test")],
])
def test_smtp_overlong_sasl_line_ends_the_auth_exchange(host, auth):
    with Wire(host.ports["smtp"]) as w:
        w.line()
        w.send(b"EHLO client.example\r\n")
        w.smtp_reply()
        for line in auth:
            w.send(line + b"\r\n")
            assert w.smtp_reply()[-1].startswith(b"334")
        w.send(LONG + b"\r\n")
        reply = w.smtp_reply()
        assert reply[-1].startswith(b"500 5.5.2"), reply
        w.send(b"MAIL FROM:<someone@remote.test>\r\n")
        assert w.smtp_reply()[-1].startswith(b"250 2.1.0"), "MAIL FROM was taken as SASL data"
        assert w.quiet() == b""


def test_pop3_overlong_sasl_line_ends_the_auth_exchange(host):
    with Wire(host.ports["pop3"]) as w:
        w.line()
        w.send(b"AUTH PLAIN\r\n")
        assert w.line().startswith(b"+ ")
        w.send(LONG + b"\r\n")
        assert w.line().startswith(b"-ERR")
        w.send(b"CAPA\r\n")
        assert w.line().startswith(b"+OK Capability"), "CAPA was taken as SASL data"


def test_imap_overlong_authenticate_line_ends_the_exchange(host):
    with Wire(host.ports["imap"]) as w:
        w.line()
        w.send(b"a1 AUTHENTICATE PLAIN\r\n")
        assert w.line().startswith(b"+")
        w.send(b"A" * 70000 + b"\r\n")  # over imap.max_line_length (65536)
        done = w.tagged(b"a1")[-1]
        assert done.split()[1] in (b"NO", b"BAD"), done
        w.send(b"a2 CAPABILITY\r\n")
        assert w.tagged(b"a2")[-1].startswith(b"a2 OK")


def test_smtp_commands_pipelined_behind_auth_wait_for_its_reply(host):
    """A command pipelined behind AUTH runs after the login's answer, in order. (The
    busy check compared bound methods with ``is``, which is never true, so MAIL ran
    while argon2 was still checking the password and got ``530``.)"""
    creds = base64.b64encode(b"\0alice@example.test\0alice-pw")
    with Wire(host.ports["submission"]) as w:
        w.line()
        w.send(b"EHLO client.example\r\n")
        w.smtp_reply()
        w.send(b"AUTH PLAIN " + creds + b"\r\nMAIL FROM:<alice@example.test>\r\n")
        assert w.smtp_reply()[-1].startswith(b"235"), "AUTH was not answered first"
        assert w.smtp_reply()[-1].startswith(b"250 2.1.0")
