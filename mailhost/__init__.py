"""mailhost: a mail host (ESMTP, submission, POP3, IMAP4) on Twisted.

This module is the public API, and the only one ``docs/embedding.md`` uses; a test
pins ``__all__``. Everything else is internal and may change.

- Build and run: ``load`` a config (or make a ``Config``), then
  ``makeService(config, store=..., checkers=..., realm=..., directory=..., queue=...)``
  gives a ``MailHostService`` to parent under your application.
- Plug in your own parts: the store contract (``IMailStore`` and the interfaces it
  hands out), cred checkers (an ``IUserSource`` one also says who receives mail) and
  a realm that returns ``IMailUser`` avatars, an ``IUserDirectory``, an
  ``IOutboundQueue``.
- Test with it: ``mailhost.testing`` (``MailHost``, ``running()``, fixtures).

The names are imported on first use (PEP 562), so ``import mailhost`` stays cheap:
the pytest plugin imports this package in every test run of a user's project.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailhost import testing
    from mailhost.auth.checkers import InMemoryChecker, PasswdFileChecker
    from mailhost.auth.directory import IUserDirectory, UserDirectory
    from mailhost.auth.realm import IMailUser, MailRealm, MailUser
    from mailhost.auth.users import IUserSource
    from mailhost.config import Config, ConfigError, load
    from mailhost.outbound.interfaces import IOutboundQueue, IQueueWriter, QueueRecipient
    from mailhost.service import MailHostService, makeService
    from mailhost.sessions import (
        CUT,
        IDispatchHook,
        ISession,
        ISessionObserver,
        Refuse,
        SessionRegistry,
    )
    from mailhost.store.interfaces import (
        DeliveryTarget,
        IFolder,
        IFolderListener,
        IMailAccount,
        IMailStore,
        IMessageWriter,
        MessageInfo,
        StoreError,
    )
    from mailhost.store.maildir import MaildirStore
    from mailhost.store.memory import MemoryStore

# Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # Build and run.
    "makeService": "mailhost.service",
    "MailHostService": "mailhost.service",
    "Config": "mailhost.config",
    "ConfigError": "mailhost.config",
    "load": "mailhost.config",
    # The store contract, and the two stores that ship.
    "IMailStore": "mailhost.store.interfaces",
    "IMailAccount": "mailhost.store.interfaces",
    "IFolder": "mailhost.store.interfaces",
    "IFolderListener": "mailhost.store.interfaces",
    "IMessageWriter": "mailhost.store.interfaces",
    "DeliveryTarget": "mailhost.store.interfaces",
    "MessageInfo": "mailhost.store.interfaces",
    "StoreError": "mailhost.store.interfaces",
    "MaildirStore": "mailhost.store.maildir",
    "MemoryStore": "mailhost.store.memory",
    # Authentication: avatars, the realm, checkers, the directory.
    "IMailUser": "mailhost.auth.realm",
    "MailUser": "mailhost.auth.realm",
    "MailRealm": "mailhost.auth.realm",
    "InMemoryChecker": "mailhost.auth.checkers",
    "PasswdFileChecker": "mailhost.auth.checkers",
    "IUserDirectory": "mailhost.auth.directory",
    "UserDirectory": "mailhost.auth.directory",
    "IUserSource": "mailhost.auth.users",
    # The outbound queue SMTP hands remote mail to (makeService(queue=...)).
    "IOutboundQueue": "mailhost.outbound.interfaces",
    "IQueueWriter": "mailhost.outbound.interfaces",
    "QueueRecipient": "mailhost.outbound.interfaces",
    # Sessions that report themselves: observers and the dispatch hook.
    "ISession": "mailhost.sessions",
    "ISessionObserver": "mailhost.sessions",
    "SessionRegistry": "mailhost.sessions",
    "IDispatchHook": "mailhost.sessions",
    "Refuse": "mailhost.sessions",
    "CUT": "mailhost.sessions",
}

__all__ = [
    "CUT",
    "Config",
    "ConfigError",
    "DeliveryTarget",
    "IDispatchHook",
    "IFolder",
    "IFolderListener",
    "IMailAccount",
    "IMailStore",
    "IMailUser",
    "IMessageWriter",
    "IOutboundQueue",
    "IQueueWriter",
    "ISession",
    "ISessionObserver",
    "IUserDirectory",
    "IUserSource",
    "InMemoryChecker",
    "MailHostService",
    "MailRealm",
    "MailUser",
    "MaildirStore",
    "MemoryStore",
    "MessageInfo",
    "PasswdFileChecker",
    "QueueRecipient",
    "Refuse",
    "SessionRegistry",
    "StoreError",
    "UserDirectory",
    "load",
    "makeService",
    "testing",
]


def __getattr__(name: str) -> Any:
    if name == "testing":
        return importlib.import_module("mailhost.testing")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mailhost' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
