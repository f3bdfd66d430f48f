"""Capture mode's directory and checker (mailhost.auth.capture)."""

from __future__ import annotations

import pytest
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from zope.interface.verify import verifyObject

from mailhost.auth.capture import AcceptAnyChecker, CaptureDirectory, login_name
from mailhost.auth.directory import IUserDirectory


def test_every_valid_address_is_its_own_local_mailbox():
    directory = CaptureDirectory(["capture.test"])
    assert verifyObject(IUserDirectory, directory)
    assert directory.is_local_domain("gmail.com") and directory.is_local_domain("x.test")
    assert directory.lookup("Customer@Gmail.COM") == ["customer@gmail.com"]
    assert directory.lookup("a+tag@b.test") == ["a+tag@b.test"]  # its own mailbox
    for bad in ("root@localhost", "../x@a.test", "a/b@c.test", "no-at-sign"):
        assert directory.lookup(bad) == []
        assert not directory.user_exists(bad)
    assert directory.user_exists("anyone@anywhere.test")
    assert directory.addresses_for("Me@x.test") == {"me@x.test"}


@pytest.mark.parametrize("given, expected", [
    ("app@shop.test", "app@shop.test"),
    ("APP@Shop.Test", "app@shop.test"),
    (b"bytes@shop.test", "bytes@shop.test"),
    ("dev", "dev@capture.test"),
    ("we ird/na!me", "we_ird_na_me@capture.test"),
    ("", "user@capture.test"),
    ("x" * 100, "x" * 64 + "@capture.test"),
    ("ann@localhost", "ann@capture.test"),
])
def test_login_names_become_mailboxes(given, expected):
    assert login_name(given, "capture.test") == expected


@pytest.mark.parametrize("username, password", [
    ("nobody@x.test", "anything"), (b"bytes@x.test", b"\xff"), ("plain", "")])
def test_any_credentials_are_accepted(username, password):
    checker = AcceptAnyChecker("capture.test")
    assert verifyObject(ICredentialsChecker, checker)
    got = []
    checker.requestAvatarId(UsernamePassword(username, password)).addCallback(got.append)
    assert got == [login_name(username, "capture.test")]
