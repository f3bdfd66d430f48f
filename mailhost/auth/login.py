"""The one entry point every protocol uses to authenticate a user.

It puts the cred ``Portal`` behind the policies that must be the same for SMTP,
POP3 and IMAP: plaintext mechanisms only over TLS (or loopback in dev), per-address
throttling with growing delays, password checks ordered so that a flood cannot
starve known users (``verify_queue``), and one structured log event per attempt.
Passwords never reach the log, and no exception text of a backend reaches a client:
a backend error is logged here and answered as a temporary failure, distinct from
the throttle's "too many failed logins" (``LoginFailed.reason``).

Checkers get credentials as cred's own checkers expect them: an ``IUsernamePassword``
whose ``username`` and ``password`` are bytes (UTF-8), and whose ``checkPassword``
takes a stored password as bytes or str. The user name is normalised once, here,
before any checker sees it: stripped and lower-cased (``normalize_address``, the rule
of the passwd file, the CLI and the directory). It is not otherwise judged: whether a
name that is not an address (``alice``) may log in is the checker's business (capture
mode's accept-anything maps it to a mailbox); a realm whose store refuses the name it
was handed fails as a server error.

A login is a ``Login``: the avatar with cred's logout callable. Every protocol ends
its session with ``Login.logout()``, the one place that calls it (once, whatever the
realm), so a realm's cleanup runs the same way for SMTP, POP3 and IMAP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Generator
from typing import Any, Literal

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import ProtocolWrapper

from mailhost.auth.passwd import normalize_address
from mailhost.auth.realm import IMailUser
from mailhost.auth.throttle import LoginThrottle
from mailhost.auth.verify_queue import PrioritizedUsernamePassword
from mailhost.diskspace import describe
from mailhost.netkey import client_key
from mailhost.settings import AuthSettings

log = Logger()

PlaintextPolicy = Literal["no", "loopback", "yes"]


LoginFailure = Literal["failed", "throttled", "error"]


class LoginFailed(Exception):
    """Authentication did not succeed; ``reason`` says why, and so what a protocol
    answers: ``"failed"`` (wrong credentials: the permanent failure), ``"throttled"``
    (too many failures from this client: try later) or ``"error"`` (the server could
    not check them, a backend or store error logged here: try later, but no "too many
    failed logins" that would send the user hunting for a typo)."""

    def __init__(self, message: str, reason: LoginFailure = "failed") -> None:
        super().__init__(message)
        self.reason: LoginFailure = reason

    @property
    def temporary(self) -> bool:
        """Throttled or a server error: the client may try again later."""
        return self.reason != "failed"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def transport_is_tls(transport: Any) -> bool:
    """True once TLS is active (implicit-TLS listener or after STARTTLS).

    Listener wrappers (limits, metrics, fault injection) are ``ProtocolWrapper``s
    between the protocol and the real transport, so look through them.
    """
    for _ in range(8):
        if transport is None:
            return False
        if ISSLTransport.providedBy(transport) or getattr(transport, "TLS", False) is True:
            return True
        if not isinstance(transport, ProtocolWrapper):
            return False
        transport = transport.transport
    return False


class Login:
    """A successful login: the ``IMailUser`` avatar and cred's logout callable.

    ``user`` and ``account`` are the avatar's. ``logout()`` calls the realm's logout
    callable exactly once (later calls do nothing) and logs, never raises, its error:
    a session ending must not fail because a realm's cleanup did.
    """

    def __init__(self, avatar: Any, logout: Callable[[], object], protocol: str = "") -> None:
        self.avatar = avatar
        self.protocol = protocol
        self._logout: Callable[[], object] | None = logout

    @property
    def user(self) -> str:
        user = self.avatar.user
        return user.decode("utf-8") if isinstance(user, bytes) else str(user)

    @property
    def account(self) -> Any:
        return self.avatar.account

    @property
    def logged_out(self) -> bool:
        return self._logout is None

    def logout(self) -> None:
        """End the login: the realm's logout callable runs now, once."""
        logout, self._logout = self._logout, None
        if logout is None:
            return
        try:
            logout()
        except Exception:
            log.failure("logout failed user={user} protocol={protocol}", user=self.user,
                        protocol=self.protocol, event="logout_error")


class LoginService:
    """Authenticate through a Portal with throttling, policy and logging.

    ``from_settings`` builds one with its throttle from ``AuthSettings``; a reload hands
    new settings over with ``use_settings`` (the throttle keeps its counts).
    """

    def __init__(self, portal: Portal, throttle: LoginThrottle | None = None,
                 allow_plaintext: PlaintextPolicy = "no", reactor: Any = None) -> None:
        self.portal = portal
        self.throttle = throttle or LoginThrottle()
        self.allow_plaintext = allow_plaintext
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self._locks: dict[str, defer.DeferredLock] = {}
        #: ``(protocol, outcome)`` callables told of every attempt (this host's metrics).
        self.observers: list[Callable[[str, str], None]] = []

    def _outcome(self, protocol: str, outcome: str) -> None:
        for observer in self.observers:
            observer(protocol, outcome)

    @classmethod
    def from_settings(cls, portal: Portal, settings: AuthSettings,
                      reactor: Any = None) -> LoginService:
        throttle = LoginThrottle(settings.max_failures, settings.failure_window,
                                 settings.lockout, known_good_ttl=settings.known_good_ttl)
        return cls(portal, throttle, settings.allow_plaintext, reactor=reactor)

    def use_settings(self, settings: AuthSettings) -> None:
        """Reload: the plaintext policy and the throttle's limits from now on."""
        self.allow_plaintext = settings.allow_plaintext
        self.throttle.use_settings(settings)

    def plaintext_allowed(self, transport: Any) -> bool:
        if transport_is_tls(transport):
            return True
        if self.allow_plaintext == "yes":
            return True
        if self.allow_plaintext == "loopback":
            peer = transport.getPeer()
            return is_loopback(getattr(peer, "host", ""))
        return False

    def login(self, username: str, password: str, client_ip: str,
              protocol: str) -> defer.Deferred[Login]:
        """Deferred firing with a ``Login`` (the IMailUser avatar and its logout);
        LoginFailed otherwise. The caller must ``logout()`` it when its session ends.

        Attempts from one address run one at a time, so the failure count is exact
        when each starts: parallel wrong guesses cannot all slip past the lockout,
        and a client opening six connections at once pays argon2 once (the others
        hit the verification cache).
        """
        key = client_key(client_ip)  # an IPv6 /64 is one client, as for the throttle
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = defer.DeferredLock()

        def done(result: Any) -> Any:
            if not lock.locked and not lock.waiting:
                self._locks.pop(key, None)
            return result

        d = lock.run(self._attempt, username, password, client_ip, protocol)
        return d.addBoth(done)

    def _failed(self, client_ip: str, protocol: str, fields: dict[str, Any]) -> LoginFailed:
        """Count and log a wrong user name or password; the error to raise."""
        self.throttle.failed(client_ip)
        log.info("login failed user={user} protocol={protocol} client={client}",
                 outcome="failed", **fields)
        self._outcome(protocol, "failed")
        return LoginFailed("authentication failed")

    @defer.inlineCallbacks
    def _attempt(self, username: str, password: str, client_ip: str, protocol: str,
                 ) -> Generator[defer.Deferred[Any], Any, Login]:
        # Normalised once, here, before any checker sees it (cred's convention).
        user = normalize_address(username)
        fields = dict(event="login", user=user, protocol=protocol, client=client_ip)
        if self.throttle.locked(client_ip):
            log.warn("login refused (throttled) user={user} protocol={protocol} client={client}",
                     outcome="throttled", **fields)
            self._outcome(protocol, "throttled")
            raise LoginFailed("too many failed logins; try again later", "throttled")
        wait = self.throttle.delay(client_ip)
        if wait:
            yield task.deferLater(self.reactor, wait, lambda: None)
        try:
            name = user.encode("utf-8")
            secret = password.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate: no stored name or password has one
            raise self._failed(client_ip, protocol, fields) from None
        credentials = PrioritizedUsernamePassword(
            name, secret, self.throttle.priority(client_ip, user))
        try:
            _iface, avatar, logout = yield self.portal.login(credentials, None, IMailUser)
        except (UnauthorizedLogin, UnhandledCredentials):
            raise self._failed(client_ip, protocol, fields) from None
        except Exception as e:
            # A store or directory error (say, a user name the store refuses): the
            # client gets the protocol's temporary failure, never the exception's text.
            # A full or read-only disk (OSError) is logged in one line, a bug in full.
            if isinstance(e, OSError):
                log.error("login error user={user} protocol={protocol} client={client}: "
                          "{error}", outcome="error", error=describe(e), **fields)
            else:
                log.failure("login error user={user} protocol={protocol} client={client}",
                            None, LogLevel.critical, outcome="error", **fields)
            self._outcome(protocol, "error")
            raise LoginFailed("temporary failure", "error") from None
        self.throttle.succeeded(client_ip, avatar.user)
        log.info("login ok user={user} protocol={protocol} client={client}",
                 outcome="ok", **fields)
        self._outcome(protocol, "ok")
        return Login(avatar, logout, protocol)
