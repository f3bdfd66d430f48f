"""POP3 over a Maildir another program changes during the session (issue 13).

The maildrop is frozen at login (RFC 1939), so a file removed later must give -ERR
for RETR/TOP and the session goes on; a file renamed to set a flag (mutt, Dovecot)
is found under its new name. Real loopback sockets, poplib.
"""

from __future__ import annotations

import os
import poplib

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

MESSAGES = [b"Subject: m%d\r\n\r\nbody %d\r\n" % (n, n) for n in range(3)]


def inbox_dir(host) -> str:
    return os.path.join(host.store.root, "example.test", "alice")


def file_of(home: str, subject: bytes) -> tuple[str, str]:
    """(subdir, name) of the message file whose text has ``subject``."""
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(home, sub)):
            with open(os.path.join(home, sub, name), "rb") as f:
                if subject in f.read():
                    return sub, name
    raise AssertionError(f"no file with {subject!r}")


@pytest.mark.parametrize("command", ["RETR", "TOP"])
@pytest_twisted.ensureDeferred
async def test_retr_of_a_file_vanished_after_login_is_err_and_session_goes_on(pop3, command):
    host = await pop3()
    for data in MESSAGES:
        await host.deliver(data)
    home = inbox_dir(host)

    def session():
        p = poplib.POP3("127.0.0.1", host.port, timeout=10)
        p.user("alice@example.test")
        p.pass_("secret")
        sub, name = file_of(home, b"Subject: m1")
        os.unlink(os.path.join(home, sub, name))
        first = p.retr(1)[1]
        with pytest.raises(poplib.error_proto) as err:
            if command == "RETR":
                p.retr(2)
            else:
                p.top(2, 0)
        third = p.retr(3)[1]
        stat = p.stat()
        p.quit()
        return first, err.value.args[0], third, stat

    first, err, third, stat = await deferToThread(session)
    assert first == [b"Subject: m0", b"", b"body 0"]
    assert err.startswith(b"-ERR")
    assert third == [b"Subject: m2", b"", b"body 2"]
    assert stat[0] == 3


@pytest_twisted.ensureDeferred
async def test_retr_finds_a_file_another_program_renamed_after_login(pop3):
    host = await pop3()
    for data in MESSAGES:
        await host.deliver(data)
    home = inbox_dir(host)

    def session():
        p = poplib.POP3("127.0.0.1", host.port, timeout=10)
        p.user("alice@example.test")
        p.pass_("secret")
        for subject in (b"Subject: m0", b"Subject: m2"):
            sub, name = file_of(home, subject)
            base = name.partition(":")[0]
            os.rename(os.path.join(home, sub, name), os.path.join(home, "cur", base + ":2,S"))
        got = [p.retr(n)[1] for n in (1, 2, 3)]
        p.quit()
        return got

    got = await deferToThread(session)
    assert got == [[b"Subject: m%d" % n, b"", b"body %d" % n] for n in range(3)]
