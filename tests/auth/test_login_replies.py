"""What IMAP and POP3 answer when a login does not succeed, over real sockets.

Regression: a login that failed because the store (or realm) failed was answered
"Too many failed logins" in IMAP and POP3, because ``LoginFailed.temporary`` meant both
"throttled" and "server error": a user with the right password was told to wait for a
lockout that never existed. Now the reasons are distinct (``LoginFailed.reason``): the
throttle's reply when throttled, ``NO [UNAVAILABLE] Temporary server failure`` /
``-ERR [SYS/TEMP] Temporary server failure`` and a logged error when the server failed,
and the failure is not counted against the client.
"""

from __future__ import annotations

import errno
import imaplib
import poplib

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.logger import globalLogPublisher

from mailhost.auth.checkers import InMemoryChecker
from mailhost.config import load
from mailhost.service import makeService
from mailhost.store.memory import MemoryStore

PASSWORDS = {"alice@example.test": "alice-pw", "broken@example.test": "broken-pw"}


class BrokenAccountStore(MemoryStore):
    """A store whose disk fails for one account."""

    def open_account(self, user):
        if user == "broken@example.test":
            raise OSError(errno.EIO, "Input/output error", "/srv/mail/broken")
        return super().open_account(user)


async def start(tmp_path, max_failures=5):
    config = load(None, [
        f'server.data_dir="{tmp_path}"', 'server.domains=["example.test"]',
        'server.allow_plaintext_auth="yes"', "auth.create_postmaster=false",
        f"auth.max_failures={max_failures}", "auth.cache_ttl=0.0",
        'outbound.resolver="127.0.0.1:9"', "server.shutdown_grace=0.0",
        'smtp.listen=[]', 'submission.listen=[]',
        'pop3.listen=["tcp:0:interface=127.0.0.1"]',
        'imap.listen=["tcp:0:interface=127.0.0.1"]',
    ])
    svc = makeService(config, store=BrokenAccountStore(),
                      checkers=[InMemoryChecker(PASSWORDS)])
    svc.startService()
    ports = await svc.wait_listening()
    return svc, {kind: p[0].getHost().port for kind, p in ports.items()}


def imap_login(port, user, password):
    m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    try:
        typ, data = m.login(user, password)
        return typ, data[0]
    except imaplib.IMAP4.error as e:
        return "NO", str(e).encode()
    finally:
        m.shutdown()


def pop3_login(port, user, password):
    p = poplib.POP3("127.0.0.1", port, timeout=30)
    try:
        p.user(user)
        return p.pass_(password)
    except poplib.error_proto as e:
        return e.args[0]
    finally:
        p.close()


@pytest.fixture
def login_events():
    events = []

    def observe(event):
        if event.get("event") == "login":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_store_error_at_imap_login_is_not_answered_too_many_failed_logins(
        tmp_path, login_events):
    svc, ports = await start(tmp_path)
    try:
        typ, text = await threads.deferToThread(imap_login, ports["imap"],
                                                "broken@example.test", "broken-pw")
        # The right password still works for a healthy account: nothing was throttled.
        ok = await threads.deferToThread(imap_login, ports["imap"],
                                         "alice@example.test", "alice-pw")
    finally:
        await svc.stopService()
    assert typ == "NO"
    assert b"[UNAVAILABLE] Temporary server failure" in text, text
    assert b"Too many failed logins" not in text
    assert ok[0] == "OK"
    errors = [e for e in login_events if e["outcome"] == "error"]
    assert len(errors) == 1 and errors[0]["log_level"].name == "error"
    assert "Input/output error" in errors[0]["error"]


@pytest_twisted.ensureDeferred
async def test_store_error_at_pop3_login_is_not_answered_too_many_failed_logins(
        tmp_path, login_events):
    svc, ports = await start(tmp_path)
    try:
        reply = await threads.deferToThread(pop3_login, ports["pop3"],
                                            "broken@example.test", "broken-pw")
        ok = await threads.deferToThread(pop3_login, ports["pop3"],
                                         "alice@example.test", "alice-pw")
    finally:
        await svc.stopService()
    assert reply.startswith(b"-ERR [SYS/TEMP] Temporary server failure"), reply
    assert ok.startswith(b"+OK"), ok
    assert [e["outcome"] for e in login_events].count("error") == 1


@pytest_twisted.ensureDeferred
async def test_throttled_login_still_gets_the_throttle_reply(tmp_path, login_events):
    svc, ports = await start(tmp_path, max_failures=1)
    try:
        imap_wrong = await threads.deferToThread(imap_login, ports["imap"],
                                                 "alice@example.test", "wrong")
        imap_locked = await threads.deferToThread(imap_login, ports["imap"],
                                                  "alice@example.test", "alice-pw")
        pop3_locked = await threads.deferToThread(pop3_login, ports["pop3"],
                                                  "alice@example.test", "alice-pw")
    finally:
        await svc.stopService()
    assert b"[AUTHENTICATIONFAILED]" in imap_wrong[1], imap_wrong
    assert b"[UNAVAILABLE] Too many failed logins" in imap_locked[1], imap_locked
    assert pop3_locked.startswith(b"-ERR [SYS/TEMP] Too many failed logins"), pop3_locked
    assert [e["outcome"] for e in login_events] == ["failed", "throttled", "throttled"]


@pytest_twisted.ensureDeferred
async def test_a_name_no_mailbox_can_have_is_a_wrong_user_not_a_server_error(
        tmp_path, login_events):
    """``a@b@example.test``: the checker does not know it, so it is a wrong user name,
    never the store's refusal answered as a server error."""
    svc, ports = await start(tmp_path)
    try:
        typ, text = await threads.deferToThread(imap_login, ports["imap"],
                                                '"a@b@example.test"', "x")
    finally:
        await svc.stopService()
    assert typ == "NO" and b"[AUTHENTICATIONFAILED]" in text, text
    assert [e["outcome"] for e in login_events] == ["failed"]
