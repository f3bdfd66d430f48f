"""A ``LoginService`` for protocol harnesses that build a factory without makeService.

It lives with the tests, not in ``mailhost``: production wiring is makeService's.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.portal import Portal

from mailhost.auth.login import LoginService, PlaintextPolicy
from mailhost.auth.realm import MailRealm
from mailhost.auth.throttle import LoginThrottle


def login_service(directory: Any, store: Any, allow_plaintext: PlaintextPolicy = "yes",
                  throttle: LoginThrottle | None = None) -> LoginService:
    """Logins against the in-memory ``directory.checker`` into ``store``; no lockouts
    unless a ``throttle`` is given."""
    portal = Portal(MailRealm(store), [directory.checker])
    return LoginService(portal, throttle or LoginThrottle(max_failures=0), allow_plaintext)
