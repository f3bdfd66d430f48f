"""One user source for login and delivery (mailhost.auth.users): the checkers say who
receives mail, so a checker alone no longer leaves SMTP answering ``550 5.1.1``."""

from __future__ import annotations

import os

import pytest
from twisted.cred.checkers import (
    FilePasswordDB,
    ICredentialsChecker,
    InMemoryUsernamePasswordDatabaseDontUse,
)
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import defer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailhost.auth.checkers import InMemoryChecker, PasswdFileChecker
from mailhost.auth.directory import IUserDirectory
from mailhost.auth.passwd import PasswdFile
from mailhost.auth.users import IUserSource, NoUserSource, user_source, users_of
from mailhost.config import load
from mailhost.service import makeService
from mailhost.store.memory import MemoryStore


def config(tmp_path):
    return load(None, [f'server.data_dir="{tmp_path}"', 'server.domains=["example.test"]',
                       "auth.create_postmaster=false", "smtp.listen=[]", "submission.listen=[]",
                       "pop3.listen=[]", "imap.listen=[]"])


def test_our_checkers_declare_their_users(tmp_path):
    memory = InMemoryChecker({"Alice@Example.test": "pw"})
    assert verifyObject(IUserSource, memory)
    assert dict(memory.mail_users()) == {"alice@example.test": []}
    memory.users["bob@example.test"] = "pw"  # changed in place, as mailhost.testing does
    assert "bob@example.test" in memory.mail_users()
    assert memory.mail_users() is memory.mail_users()  # one object: the alias table stays
    path = tmp_path / "passwd"
    path.write_text("carol@example.test:$argon2id$x:aliases=c@example.test\n")
    passwd = PasswdFileChecker(PasswdFile(str(path)))
    assert verifyObject(IUserSource, passwd)
    assert passwd.mail_users() == {"carol@example.test": ["c@example.test"]}


def test_twisted_in_memory_checker_is_read_live():
    db = InMemoryUsernamePasswordDatabaseDontUse()
    db.addUser(b"alice@example.test", b"pw")
    db.addUser(b"Upper@example.test", b"pw")  # no login can reach it: names are lower-cased
    db.addUser(b"bare", b"pw")  # not an address
    users = user_source(db).mail_users()
    assert list(users) == ["alice@example.test"] and users["alice@example.test"] == []
    db.addUser(b"bob@example.test", b"pw")
    assert "bob@example.test" in users and len(users) == 2


def test_twisted_file_checker_is_reread_when_the_file_changes(tmp_path):
    path = tmp_path / "users"
    path.write_bytes(b"alice@example.test:pw\nbroken\n")
    source = user_source(FilePasswordDB(str(path)))
    assert dict(source.mail_users()) == {"alice@example.test": []}
    path.write_bytes(b"alice@example.test:pw\nbob@example.test:pw2\n")
    os.utime(path, ns=(1, 1))  # a different time even within one clock tick
    assert set(source.mail_users()) == {"alice@example.test", "bob@example.test"}
    path.unlink()
    assert dict(source.mail_users()) == {}


def test_several_checkers_add_up():
    a = InMemoryChecker({"a@example.test": "x"})
    db = InMemoryUsernamePasswordDatabaseDontUse()
    db.addUser(b"b@example.test", b"y")
    users = users_of([a, db])
    assert set(users()) == {"a@example.test", "b@example.test"}
    assert users() is users()  # no rebuild while nothing changed


def test_a_checker_alone_makes_the_directory(tmp_path):
    checker = InMemoryChecker({"alice@example.test": "pw"})
    root = makeService(config(tmp_path), store=MemoryStore(), checkers=[checker])
    assert root.directory.lookup("Alice+tag@example.test") == ["alice@example.test"]
    assert root.directory.lookup("nobody@example.test") == []
    checker.add_user("bob@example.test", "pw")
    assert root.directory.lookup("bob@example.test") == ["bob@example.test"]


@implementer(ICredentialsChecker)
class Opaque:
    """A checker that cannot say who its users are."""

    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials):
        return defer.succeed(credentials.username)


def test_a_checker_without_users_and_no_directory_is_refused_naming_the_fix(tmp_path):
    with pytest.raises(NoUserSource, match="IUserSource.*directory="):
        makeService(config(tmp_path), store=MemoryStore(), checkers=[Opaque()])


@implementer(ICredentialsChecker, IUserDirectory)
class Everyone(Opaque):
    """A checker that is its own directory (as capture mode's accept-anything)."""

    def is_local_domain(self, domain):
        return True

    def lookup(self, address):
        return [address.lower()]

    def addresses_for(self, user):
        return {user}

    def user_exists(self, user):
        return True


def test_a_checker_that_is_a_directory_decides_delivery(tmp_path):
    everyone = Everyone()
    root = makeService(config(tmp_path), store=MemoryStore(), checkers=[everyone])
    assert root.directory is everyone and root.own_directory is None
