"""LoginService: throttling, plaintext policy, and the realm behind it."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import globalLogPublisher
from zope.interface import directlyProvides

from mailhost.auth.directory import UserDirectory
from mailhost.auth.login import Login, LoginFailed
from mailhost.auth.realm import IMailUser, MailUser
from mailhost.auth.throttle import LoginThrottle
from mailhost.store.memory import MemoryStore
from tests.logins import login_service


def service(throttle=None, policy="yes", password="pw"):
    d = UserDirectory.in_memory(["example.test"], {"alice@example.test": password})
    svc = login_service(d, MemoryStore(), allow_plaintext=policy, throttle=throttle)
    svc.reactor = task.Clock()
    return svc


@pytest_twisted.inlineCallbacks
def test_login_gives_account():
    login = yield service().login("Alice@example.test", "pw", "127.0.0.1", "imap")
    assert isinstance(login, Login)
    assert IMailUser.providedBy(login.avatar)
    assert login.user == "alice@example.test"
    folders = yield login.account.list_folders()
    assert folders[0] == "INBOX"


def test_logout_calls_the_realms_logout_once_and_never_raises():
    """cred's logout callable is honoured in one place, ``Login.logout``: once, however
    often a protocol ends its session, and a failing one is logged, not raised."""
    avatar = MailUser("alice@example.test", account=None)
    calls = []
    login = Login(avatar, lambda: calls.append("out"), "pop3")
    assert not login.logged_out
    login.logout()
    login.logout()
    assert calls == ["out"] and login.logged_out

    def broken():
        raise RuntimeError("realm cleanup failed")

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        Login(avatar, broken, "imap").logout()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e.get("event") for e in events] == ["logout_error"]


@pytest_twisted.inlineCallbacks
def test_failure_and_lockout():
    now = [0.0]
    throttle = LoginThrottle(max_failures=3, window=60, lockout=100, clock=lambda: now[0])
    svc = service(throttle)
    clock = svc.reactor
    for _ in range(3):
        d = svc.login("alice@example.test", "bad", "10.0.0.1", "smtp")
        clock.advance(10)
        with pytest.raises(LoginFailed) as e:
            yield d
        assert not e.value.temporary
    # Locked now: even the right password is refused, temporarily.
    with pytest.raises(LoginFailed) as e:
        yield svc.login("alice@example.test", "pw", "10.0.0.1", "pop3")
    assert e.value.temporary and e.value.reason == "throttled"
    # Another address is not affected.
    yield svc.login("alice@example.test", "pw", "10.0.0.2", "pop3")
    now[0] = 101
    d = svc.login("alice@example.test", "pw", "10.0.0.1", "pop3")
    clock.advance(10)
    yield d


def test_delays_grow():
    now = [0.0]
    t = LoginThrottle(max_failures=10, clock=lambda: now[0])
    delays = []
    for _ in range(5):
        t.failed("1.2.3.4")
        delays.append(t.delay("1.2.3.4"))
    assert delays == sorted(delays) and delays[0] > 0
    t.succeeded("1.2.3.4")
    assert t.delay("1.2.3.4") == 0


class FakeTransport:
    def __init__(self, host):
        self._peer = IPv4Address("TCP", host, 1234)

    def getPeer(self):
        return self._peer


def test_plaintext_policy():
    assert not service(policy="no").plaintext_allowed(FakeTransport("127.0.0.1"))
    assert service(policy="loopback").plaintext_allowed(FakeTransport("127.0.0.1"))
    assert not service(policy="loopback").plaintext_allowed(FakeTransport("192.0.2.1"))
    assert service(policy="yes").plaintext_allowed(FakeTransport("192.0.2.1"))
    tls = FakeTransport("192.0.2.1")
    directlyProvides(tls, ISSLTransport)
    assert service(policy="no").plaintext_allowed(tls)


@pytest_twisted.inlineCallbacks
def test_log_never_contains_password():
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        svc = service(password="pw-secret-1")
        yield svc.login("alice@example.test", "pw-secret-1", "127.0.0.1", "imap")
        with pytest.raises(LoginFailed):
            yield svc.login("alice@example.test", "pw-secret-2", "127.0.0.1", "imap")
    finally:
        globalLogPublisher.removeObserver(events.append)
    logins = [e for e in events if e.get("event") == "login"]
    assert [e["outcome"] for e in logins] == ["ok", "failed"]
    assert "pw-secret" not in repr(events)


@pytest_twisted.inlineCallbacks
def test_parallel_attempts_from_one_address():
    """Wrong guesses in parallel cannot slip past the lockout; right ones all succeed."""
    from twisted.internet import defer, reactor

    throttle = LoginThrottle(max_failures=3, window=60, lockout=100)
    svc = service(throttle)
    svc.reactor = reactor  # real delays (kept tiny below)
    ok = yield defer.DeferredList(
        [svc.login("alice@example.test", "pw", "10.0.0.9", "imap") for _ in range(6)],
        consumeErrors=True)
    assert all(success for success, _ in ok)
    throttle.max_delay = 0.01
    results = yield defer.DeferredList(
        [svc.login("alice@example.test", "bad", "10.0.0.8", "imap") for _ in range(8)],
        consumeErrors=True)
    temporary = [r.value.temporary for success, r in results if not success]
    assert len(temporary) == 8 and temporary.count(False) == 3


@pytest_twisted.inlineCallbacks
def test_checkers_get_bytes_credentials_with_the_name_normalised_once():
    """cred's convention: ``IUsernamePassword`` with bytes, as Twisted's own checkers
    compare them. Before, checkers got str, so every bytes-based checker (Twisted's
    ``InMemoryUsernamePasswordDatabaseDontUse``, ``FilePasswordDB``) failed silently."""
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
    from twisted.cred.portal import Portal

    from mailhost.auth.login import LoginService
    from mailhost.auth.realm import MailRealm

    seen = []
    db = InMemoryUsernamePasswordDatabaseDontUse()
    db.addUser(b"alice@example.test", "pässword".encode())
    original = db.requestAvatarId

    def recording(credentials):
        seen.append((credentials.username, credentials.password))
        return original(credentials)

    db.requestAvatarId = recording
    svc = LoginService(Portal(MailRealm(MemoryStore()), [db]), LoginThrottle(max_failures=0))
    login = yield svc.login("  Alice@EXAMPLE.test ", "pässword", "127.0.0.1", "imap")
    assert login.user == "alice@example.test"  # the bytes avatar id, decoded by the realm
    with pytest.raises(LoginFailed) as e:
        yield svc.login("alice@example.test", "passwörd", "127.0.0.1", "imap")
    assert e.value.reason == "failed" and not e.value.temporary
    assert seen == [(b"alice@example.test", "pässword".encode()),
                    (b"alice@example.test", "passwörd".encode())]
    # A name that is not an address is the checker's to judge (capture mode takes any).
    with pytest.raises(LoginFailed) as e:
        yield svc.login(" Bob ", "pässword", "127.0.0.1", "imap")
    assert e.value.reason == "failed" and seen[2] == (b"bob", "pässword".encode())


def test_credentials_check_a_stored_password_given_as_bytes_or_str():
    from mailhost.auth.verify_queue import PrioritizedUsernamePassword

    creds = PrioritizedUsernamePassword(b"alice@example.test", "pw€".encode(), 0)
    assert creds.checkPassword("pw€".encode()) and creds.checkPassword("pw€")
    assert not creds.checkPassword(b"pw") and not creds.checkPassword(None)
