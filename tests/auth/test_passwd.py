"""The passwd file, argon2 checker, verification cache and directory."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from zope.interface.verify import verifyObject

from mailhost.auth.aliases import AliasesFile, parse_aliases
from mailhost.auth.checkers import InMemoryChecker, PasswdFileChecker
from mailhost.auth.directory import IUserDirectory, UserDirectory
from mailhost.auth.hashing import VerificationCache, hash_password
from mailhost.auth.passwd import PasswdEntry, PasswdError, PasswdFile, parse_line, validate_user


def make_passwd(tmp_path, users):
    pf = PasswdFile(str(tmp_path / "passwd"))
    pf.save({u: PasswdEntry(u, hash_password(p)) for u, p in users.items()})
    return pf


def test_round_trip_and_mode(tmp_path):
    pf = make_passwd(tmp_path, {"Alice@Example.Test": "pw"})
    assert list(pf.entries()) == ["alice@example.test"]
    assert pf.get("ALICE@example.test").password_hash.startswith("$argon2id$")
    assert os.stat(pf.path).st_mode & 0o777 == 0o600


def test_reload_on_change_by_hand(tmp_path):
    pf = make_passwd(tmp_path, {"alice@example.test": "pw"})
    assert pf.get("bob@example.test") is None
    with open(pf.path, "a") as f:
        f.write(f"bob@example.test:{hash_password('x')}:aliases=b@example.test\n")
    assert pf.get("bob@example.test").aliases == ["b@example.test"]


def test_bad_lines_are_skipped(tmp_path):
    p = tmp_path / "passwd"
    p.write_text("garbage\n# comment\n\nalice@example.test:$argon2id$x\nbad user@x:y\n")
    assert list(PasswdFile(str(p)).entries()) == ["alice@example.test"]


@pytest.mark.parametrize("user", ["noat", "@example.test", "a@", "../x@example.test",
                                  "a/b@example.test", "a:b@example.test", ".a@example.test",
                                  "a@localhost", "a@b@example.test", "x,y@example.test",
                                  "x" * 65 + "@example.test", "a\nb@example.test",
                                  "a%b@example.test", "a!b@example.test", "#a@example.test",
                                  "a@exa_mple.test", "a@-example.test", "a.@example.test"])
def test_invalid_users(user):
    with pytest.raises(PasswdError):
        validate_user(user)


FAKE_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"


@pytest.mark.parametrize("alias", ["info:x@example.test", "info@example.test\nmallory@example.test:h",
                                   "a@b@example.test", "x,y@example.test", " sp@example.test",
                                   "info@example.test\r", "x" * 65 + "@example.test"])
def test_writer_refuses_fields_that_would_not_parse_back(tmp_path, alias):
    """Issue 17, item 2: the writer refuses, and the file stays as it was."""
    pf = make_passwd(tmp_path, {"alice@example.test": "pw"})
    before = open(pf.path, "rb").read()
    entries = dict(pf.entries())
    entries["bob@example.test"] = PasswdEntry("bob@example.test", FAKE_HASH, {"aliases": alias})
    with pytest.raises(PasswdError):
        pf.save(entries)
    assert open(pf.path, "rb").read() == before
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".passwd.")]


@pytest.mark.parametrize("entry", [
    PasswdEntry("bob@example.test", "has:colon"),
    PasswdEntry("bob@example.test", "has space"),
    PasswdEntry("bob@example.test", ""),
    PasswdEntry("bob@example.test", FAKE_HASH, {"quota": "1\nmallory@example.test:x"}),
    PasswdEntry("bob@example.test", FAKE_HASH, {"bad key": "1"}),
    PasswdEntry("bob@example.test", FAKE_HASH, {"k": "v:w"}),
    PasswdEntry("a@b@example.test", FAKE_HASH),
])
def test_writer_refuses_bad_entries(entry):
    with pytest.raises(PasswdError):
        entry.to_line()


def test_loader_skips_bad_lines_and_keeps_the_first_of_a_user(tmp_path):
    p = tmp_path / "passwd"
    p.write_bytes(b"alice@example.test:h1\n"
                  b"b\xffad@example.test:h2\n"  # not UTF-8
                  b"x,y@example.test:h3\n"
                  + ("x" * 65 + "@example.test:h4\n").encode()
                  + b"carol@example.test:h5:aliases=ok@example.test,a b@example.test\n"
                  b"alice@example.test:evil\n"
                  b"dave@example.test:h6:aliases=d1@example.test\r\n")
    entries = PasswdFile(str(p)).entries()
    assert sorted(entries) == ["alice@example.test", "dave@example.test"]
    assert entries["alice@example.test"].password_hash == "h1"
    assert entries["dave@example.test"].aliases == ["d1@example.test"]


@settings(max_examples=300, deadline=None)
@given(user=st.text(max_size=30), alias=st.text(max_size=30), value=st.text(max_size=20))
def test_what_the_writer_writes_reads_back(user, alias, value):
    """Whatever an entry holds, to_line either refuses it or writes one line that
    parses back to the same entry."""
    entry = PasswdEntry(user, FAKE_HASH, {"aliases": alias, "quota": value})
    try:
        line = entry.to_line()
    except PasswdError:
        return
    assert "\n" not in line and "\r" not in line and len(line.splitlines()) == 1
    back = parse_line(line)
    assert (back.user, back.password_hash, back.extra) == (user.lower().strip(), FAKE_HASH,
                                                           entry.extra)


def test_directory_ignores_foreign_aliases_for_sending():
    """Issue 17, item 2: an alias outside the local domains never widens what a user
    may send as (submission.enforce_sender)."""
    d = UserDirectory(["example.test"],
                      lambda: {"u@example.test": ["ok@example.test", "evil@other.test"]})
    assert d.addresses_for("u@example.test") == {"u@example.test", "ok@example.test"}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_parse_line_never_crashes(text):
    try:
        parse_line(text)
    except PasswdError:
        pass


@pytest_twisted.inlineCallbacks
def test_checker_and_cache(tmp_path):
    pf = make_passwd(tmp_path, {"alice@example.test": "right"})
    cache = VerificationCache(ttl=60)
    checker = PasswdFileChecker(pf, cache)
    assert verifyObject(ICredentialsChecker, checker)
    user = yield checker.requestAvatarId(UsernamePassword(b"Alice@example.test", b"right"))
    assert user == "alice@example.test"
    assert cache.hit("alice@example.test", pf.get("alice@example.test").password_hash, "right")
    for wrong in (UsernamePassword("alice@example.test", "wrong"),
                  UsernamePassword("nobody@example.test", "right")):
        with pytest.raises(UnauthorizedLogin):
            yield checker.requestAvatarId(wrong)


def test_cache_is_fast_and_keyless(tmp_path):
    """100 cached logins must not pay argon2 each time; the cache holds no password."""
    import time

    cache = VerificationCache(ttl=60)
    h = hash_password("pw")
    cache.remember("u@example.test", h, "pw")
    start = time.monotonic()
    for _ in range(100):
        assert cache.hit("u@example.test", h, "pw")
    assert time.monotonic() - start < 0.5
    assert not cache.hit("u@example.test", h, "other")
    assert all(b"pw" not in k for k in cache._entries)


def test_cache_expires():
    now = [0.0]
    cache = VerificationCache(ttl=10, clock=lambda: now[0])
    cache.remember("u", "h", "p")
    now[0] = 11
    assert not cache.hit("u", "h", "p")


@pytest_twisted.inlineCallbacks
def test_in_memory_checker():
    checker = InMemoryChecker({"a@example.test": "pw"})
    assert verifyObject(ICredentialsChecker, checker)
    assert (yield checker.requestAvatarId(UsernamePassword("A@example.test", "pw"))) == "a@example.test"
    with pytest.raises(UnauthorizedLogin):
        yield checker.requestAvatarId(UsernamePassword("a@example.test", "no"))


def test_aliases_parse():
    table = parse_aliases("info@x.test: a@x.test, b@x.test\n# c\n@x.test: a@x.test\nbad line\n")
    assert table == {"info@x.test": ["a@x.test", "b@x.test"], "@x.test": ["a@x.test"]}


def directory():
    return UserDirectory.in_memory(
        ["example.test"],
        {"alice@example.test": "a", "bob@example.test": "b"},
        {"info@example.test": ["alice@example.test", "bob@example.test"],
         "team@example.test": ["info@example.test", "alice@example.test"],
         "loop1@example.test": ["loop2@example.test"],
         "loop2@example.test": ["loop1@example.test", "bob@example.test"],
         "@catch.test": ["alice@example.test"]},
    )


def test_directory_lookup():
    d = directory()
    assert verifyObject(IUserDirectory, d)
    assert d.lookup("ALICE@example.test") == ["alice@example.test"]
    assert d.lookup("nobody@example.test") == []
    assert d.lookup("info@example.test") == ["alice@example.test", "bob@example.test"]
    assert d.lookup("team@example.test") == ["alice@example.test", "bob@example.test"]
    assert d.lookup("loop1@example.test") == ["bob@example.test"]
    assert d.lookup("alice+tag@example.test") == ["alice@example.test"]
    assert d.lookup("someone@other.test") == []
    assert d.is_local_domain("EXAMPLE.test.")
    assert not d.is_local_domain("other.test")


def test_directory_catch_all():
    d = UserDirectory.in_memory(["example.test"], {"alice@example.test": "a"},
                                {"@example.test": ["alice@example.test"]})
    assert d.lookup("whoever@example.test") == ["alice@example.test"]
    assert d.lookup("alice@example.test") == ["alice@example.test"]


def test_addresses_for():
    d = directory()
    assert d.addresses_for("alice@example.test") == {
        "alice@example.test", "info@example.test", "team@example.test"}


def test_directory_reads_files(tmp_path):
    pf = make_passwd(tmp_path, {"alice@example.test": "a"})
    af = AliasesFile(str(tmp_path / "aliases"))
    d = UserDirectory(["example.test"],
                      lambda: {u: e.aliases for u, e in pf.entries().items()}, af.table)
    assert d.lookup("abuse@example.test") == []
    (tmp_path / "aliases").write_text("abuse@example.test: alice@example.test\n")
    assert d.lookup("abuse@example.test") == ["alice@example.test"]


@pytest_twisted.inlineCallbacks
def test_unknown_user_costs_a_real_check(tmp_path, monkeypatch):
    """An unknown user is verified against a dummy hash, so timing does not reveal users."""
    from mailhost.auth import checkers

    pf = make_passwd(tmp_path, {"alice@example.test": "right"})
    calls = []
    real = checkers.verify_password
    monkeypatch.setattr(checkers, "verify_password",
                        lambda h, p: calls.append(h) or real(h, p))
    checker = PasswdFileChecker(pf, VerificationCache(ttl=0))
    with pytest.raises(UnauthorizedLogin):
        yield checker.requestAvatarId(UsernamePassword("ghost@example.test", "right"))
    with pytest.raises(UnauthorizedLogin):
        yield checker.requestAvatarId(UsernamePassword("alice@example.test", "wrong"))
    assert len(calls) == 2 and all(h.startswith("$argon2id$") for h in calls)


def test_alias_table_is_rebuilt_only_when_a_file_changes(tmp_path):
    """Every RCPT looks up the directory: the file-backed table must not be rebuilt each time."""
    pf = make_passwd(tmp_path, {"alice@example.test": "a"})
    af = AliasesFile(str(tmp_path / "aliases"))
    (tmp_path / "aliases").write_text("info@example.test: alice@example.test\n")
    d = UserDirectory(["example.test"], pf.aliases_by_user, af.table)
    first = d._alias_table(pf.aliases_by_user())
    assert d._alias_table(pf.aliases_by_user()) is first
    (tmp_path / "aliases").write_text("info@example.test: alice@example.test\nsales@example.test: alice@example.test\n")
    assert d.lookup("sales@example.test") == ["alice@example.test"]
    assert d._alias_table(pf.aliases_by_user()) is not first
