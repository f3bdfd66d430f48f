"""The front door: ``mailhost/__init__.py`` exports exactly the public API, and cheaply."""

from __future__ import annotations

import subprocess
import sys

import mailhost

PUBLIC = [
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


def test_all_is_pinned():
    """Changing the public API is a decision: update this list and docs/embedding.md."""
    assert mailhost.__all__ == PUBLIC


def test_every_public_name_resolves_to_its_home():
    import mailhost.testing
    from mailhost.config import Config
    from mailhost.service import makeService
    from mailhost.store.interfaces import IMailStore

    for name in PUBLIC:
        assert getattr(mailhost, name) is not None, name
    assert mailhost.testing.__name__ == "mailhost.testing"  # reachable as an attribute
    assert mailhost.makeService is makeService
    assert mailhost.Config is Config and mailhost.IMailStore is IMailStore
    assert set(PUBLIC) <= set(dir(mailhost))


def test_importing_the_package_imports_no_part():
    """The pytest plugin imports ``mailhost`` in every test run of a user's project."""
    code = ("import sys, mailhost; "
            "print(sorted(m for m in sys.modules if m.startswith('mailhost.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"
