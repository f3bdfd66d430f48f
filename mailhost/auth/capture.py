"""Capture mode's directory and checker: everyone lives here, anyone may log in.

Capture mode (``[capture] enabled = true``) is a development sink: an application
under test sends to real-looking addresses (``customer@gmail.com``) and the mail is
kept, one mailbox per recipient, instead of being relayed or refused. It is built
from the ordinary seams, so SMTP has no capture special case:

- ``CaptureDirectory`` (an ``IUserDirectory``) calls every domain local and every
  valid address its own mailbox, so SMTP's recipient policy accepts it as local
  mail and never reaches the relay branch; the store makes the mailbox on its first
  delivery.
- ``AcceptAnyChecker`` (an ``ICredentialsChecker``) accepts any user name with any
  password, for every mechanism (they all end in ``IUsernamePassword``); the avatar
  is the name as an address, so IMAP/POP3 as a recipient shows what it was sent.

``mailhost.service`` builds both when capture mode is on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import defer
from zope.interface import implementer

from mailhost.auth.directory import IUserDirectory
from mailhost.auth.passwd import normalize_address
from mailhost.store.names import InvalidUserName, check_address

_NOT_ATEXT = re.compile(r"[^a-z0-9._+=-]")


def valid_address(address: str) -> bool:
    """Whether the store can hold a mailbox of this (lower-cased) address."""
    try:
        check_address(address)
    except InvalidUserName:
        return False
    return True


@implementer(IUserDirectory)
class CaptureDirectory:
    """Implements: IUserDirectory where every valid address is a local mailbox.

    ``domains`` are kept for those who ask which domains are "ours" (the first one is
    the domain of a login name without ``@``); every other domain is local too.
    """

    def __init__(self, domains: Iterable[str]) -> None:
        self.domains = [d.strip().lower().rstrip(".") for d in domains]
        self.first_domain = self.domains[0] if self.domains else "localhost"

    def is_local_domain(self, domain: str) -> bool:
        return bool(domain.strip())

    def lookup(self, address: str) -> list[str]:
        """The address itself (its own mailbox), or [] when no mailbox can have that
        name (SMTP then answers 550 5.1.1)."""
        address = normalize_address(address)
        return [address] if valid_address(address) else []

    def addresses_for(self, user: str) -> set[str]:
        """Only the user's own address: capture mode turns the sender check off in
        its settings (``SMTPSettings.enforce_sender``) rather than claim every address."""
        return {normalize_address(user)}

    def user_exists(self, user: str) -> bool:
        return valid_address(normalize_address(user))


def login_name(username: str | bytes, domain: str) -> str:
    """The mailbox a capture-mode login uses: the name itself when it is an address,
    else ``name@domain`` with characters a mailbox name cannot hold replaced by ``_``."""
    if isinstance(username, bytes):
        username = username.decode("utf-8", "replace")
    user = normalize_address(username)
    if valid_address(user):
        return user
    local = _NOT_ATEXT.sub("_", user.partition("@")[0]).strip(".")[:64].strip(".")
    candidate = f"{local or 'user'}@{domain}"
    return candidate if valid_address(candidate) else f"user@{domain}"


@implementer(ICredentialsChecker)
class AcceptAnyChecker:
    """Implements: ICredentialsChecker that accepts every user name and password
    (capture mode); the avatar id is ``login_name(username, domain)``."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, domain: str) -> None:
        self.domain = domain

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:  # noqa: N802
        return defer.succeed(login_name(credentials.username, self.domain))
