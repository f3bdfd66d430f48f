"""The cred realm: hands each protocol the logged-in user's mail account.

Protocols ask for ``IMailUser``; the avatar carries the canonical user name and the
opened ``IMailAccount``. Cleanup at the end of a session is cred's: the logout
callable a realm returns, which ``mailhost.auth.login.Login.logout`` calls once.
``avatars`` lets an embedder map further interfaces to their own factories without
this package importing any protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import Any

from twisted.cred.portal import IRealm
from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

from mailhost.store.interfaces import IMailAccount, IMailStore


class IMailUser(Interface):
    """A logged-in mail user."""

    user = Attribute("Canonical address, e.g. 'alice@example.test'.")
    account = Attribute("The user's IMailAccount.")


@implementer(IMailUser)
class MailUser:
    """Implements: IMailUser."""

    def __init__(self, user: str | bytes, account: IMailAccount) -> None:
        # cred avatar ids are often bytes (Twisted's own checkers return them).
        self.user = user.decode("utf-8") if isinstance(user, bytes) else user
        self.account = account


def _nothing_to_do() -> None:
    """The logout of a ``MailUser``: the account needs no cleanup."""


AvatarFactory = Callable[[str, IMailStore], Any]


@implementer(IRealm)
class MailRealm:
    """Implements: IRealm. Avatars come from the store, by interface."""

    def __init__(self, store: IMailStore, avatars: Mapping[Any, AvatarFactory] | None = None) -> None:
        self.store = store
        self.avatars = dict(avatars or {})

    @defer.inlineCallbacks
    def _make(self, interface: Any, avatar_id: str,
              ) -> Generator[Any, Any, tuple[Any, Any, Callable[[], object]]]:
        if interface is IMailUser:
            account = yield self.store.open_account(avatar_id)
            return (interface, MailUser(avatar_id, account), _nothing_to_do)
        avatar = yield self.avatars[interface](avatar_id, self.store)
        logout = getattr(avatar, "logout", _nothing_to_do)
        return (interface, avatar, logout)

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> defer.Deferred[Any]:
        user = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        for interface in interfaces:
            if interface is IMailUser or interface in self.avatars:
                return self._make(interface, user)
        return defer.fail(NotImplementedError(f"no avatar for {interfaces!r}"))
