"""Embedding mailhost in an existing Twisted application, with pluggable auth.

The checker and the realm are written here, in the test, as an embedder would, and
everything of mailhost this module uses comes through the front door
(``mailhost/__init__.py``; a test below reads this file's imports): the "pluggable"
promise is that mailhost uses them without knowing them.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import smtplib

import pytest_twisted
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailhost import Config, IMailUser, MailUser, MemoryStore, UserDirectory, makeService


@implementer(ICredentialsChecker)
class TokenChecker:
    """Accepts any user whose password is 'token-' + their local part (an SSO stand-in)."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.calls: list[str] = []

    def requestAvatarId(self, credentials):
        user = credentials.username
        user = user.decode() if isinstance(user, bytes) else user
        password = credentials.password
        password = password.decode() if isinstance(password, bytes) else password
        self.calls.append(user)
        if password == "token-" + user.split("@")[0]:
            return defer.succeed(user.lower())
        return defer.fail(UnauthorizedLogin())


@implementer(IRealm)
class TenantRealm:
    """Maps every login to a per-tenant mailbox name, and records what it handed out."""

    def __init__(self, store) -> None:
        self.store = store
        self.avatars: list[str] = []
        self.logouts: list[str] = []

    @defer.inlineCallbacks
    def requestAvatar(self, avatarId, mind, *interfaces):
        assert IMailUser in interfaces
        mailbox = "tenant-" + avatarId
        account = yield self.store.open_account(mailbox)
        self.avatars.append(mailbox)
        return IMailUser, MailUser(mailbox, account), lambda: self.logouts.append(mailbox)


def embedded_config() -> Config:
    config = Config()
    config.server.domains = ["example.test"]
    config.server.allow_plaintext_auth = "yes"
    config.store.backend = "memory"
    config.auth.create_postmaster = False
    for section in (config.smtp, config.submission, config.pop3, config.imap):
        section.listen = ["tcp:0:interface=127.0.0.1"]
    return config


@pytest_twisted.inlineCallbacks
def test_custom_checker_and_realm_are_used(tmp_path):
    config = embedded_config()
    config.server.data_dir = str(tmp_path)
    store = MemoryStore()
    checker, realm = TokenChecker(), TenantRealm(store)
    assert verifyObject(ICredentialsChecker, checker) and verifyObject(IRealm, realm)
    directory = UserDirectory(["example.test"], lambda: {"alice@example.test": []})
    svc = makeService(config, store=store, checkers=[checker], realm=realm,
                      directory=directory)
    svc.startService()
    try:
        ports = yield svc.wait_listening()
        smtp = ports["smtp"][0].getHost().port
        submission = ports["submission"][0].getHost().port
        imap = ports["imap"][0].getHost().port
        pop3 = ports["pop3"][0].getHost().port

        def client_side():
            with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as s:
                s.sendmail("x@elsewhere.test", ["alice@example.test"],
                           b"Subject: embedded\r\n\r\nhi\r\n")
            with smtplib.SMTP("127.0.0.1", submission, timeout=30) as s:
                s.login("alice@example.test", "token-alice")
            m = imaplib.IMAP4("127.0.0.1", imap, timeout=30)
            try:
                m.login("alice@example.test", "wrong")
                raise AssertionError("wrong token accepted")
            except imaplib.IMAP4.error:
                pass
            m.login("alice@example.test", "token-alice")
            folders = m.list()[1]
            m.logout()
            p = poplib.POP3("127.0.0.1", pop3, timeout=30)
            p.user("alice@example.test")
            p.pass_("token-alice")
            count = p.stat()[0]
            p.quit()
            return folders, count

        folders, count = yield threads.deferToThread(client_side)
        # Each protocol ended its login through cred's logout callable; IMAP's and
        # POP3's when the server side of the connection is gone.
        for _ in range(100):
            if len(realm.logouts) == 3:
                break
            yield deferLater(reactor, 0.05, lambda: None)
    finally:
        yield svc.stopService()
    assert checker.calls.count("alice@example.test") == 4  # SMTP, wrong IMAP, IMAP, POP3
    assert realm.avatars == ["tenant-alice@example.test"] * 3
    assert realm.logouts == realm.avatars
    assert any(b"INBOX" in f for f in folders)
    # The SMTP delivery went to alice's own mailbox; the realm mapped logins to the
    # tenant mailbox, which is empty: proof the custom realm chose the account.
    assert count == 0
    alice = yield store.open_account("alice@example.test")
    inbox = yield alice.open_folder("INBOX")
    assert len(inbox.messages()) == 1


def installed_tac():
    """The example .tac where the installed package has it (package data)."""
    import importlib.resources

    return str(importlib.resources.files("mailhost") / "embedded.tac")


def test_embedded_tac_runs_beside_a_web_site(tmp_path):
    """The packaged embedded.tac: one twistd process serving a web page and SMTP/IMAP,
    relaying nothing (no queue directory in its data)."""
    import os
    import subprocess
    import sys
    import time

    from tests.mailhost_process import TWISTD, free_port

    web, smtp, imap = free_port(), free_port(), free_port()
    env = dict(os.environ, MAILHOST_WEB_PORT=str(web), MAILHOST_SMTP_PORT=str(smtp),
               MAILHOST_IMAP_PORT=str(imap), MAILHOST_DATA=str(tmp_path / "data"))
    proc = subprocess.Popen(
        [sys.executable, TWISTD, "-n", "--pidfile=", "-y",
         installed_tac()],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                s = smtplib.SMTP("127.0.0.1", smtp, timeout=10)
                break
            except OSError:
                assert time.monotonic() < deadline, "embedded.tac did not start"
                time.sleep(0.2)
        with s:
            s.sendmail("x@elsewhere.test", ["postmaster@example.test"], b"Subject: a\r\n\r\nb\r\n")
        r = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{web}/"], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0
        assert len(r.stdout.split()) == 2, r.stdout  # "<uid> <size>": the message is there
    finally:
        proc.kill()
        proc.wait(10)
    assert not (tmp_path / "data" / "queue").exists()


def test_embedded_tac_is_package_data(tmp_path):
    """Regression: the example lived in tap-configs/, which no installed package has.
    setup.cfg must copy it into the package (setuptools' build_py, as a wheel does)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert installed_tac().endswith(os.path.join("mailhost", "embedded.tac"))
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    for name in ("mailhost", "twisted"):
        shutil.copytree(root / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "mailhost-data*"))
    result = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
         "--build-lib", str(tmp_path / "lib")],
        cwd=src, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    built = tmp_path / "lib" / "mailhost" / "embedded.tac"
    assert built.read_text() == (root / "mailhost" / "embedded.tac").read_text()


def test_this_module_uses_mailhost_through_the_front_door_only():
    import ast

    tree = ast.parse(open(__file__).read())
    used = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and node.module and node.module.split(".")[0] == "mailhost"}
    used |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names if alias.name.split(".")[0] == "mailhost"}
    assert used == {"mailhost"}
