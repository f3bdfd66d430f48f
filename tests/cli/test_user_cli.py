"""The ``mailhost`` admin command, run as a subprocess the way an admin runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest_twisted
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer

from mailhost.auth.checkers import PasswdFileChecker
from mailhost.auth.passwd import PasswdFile

MAILHOST = os.path.join(os.path.dirname(sys.executable), "mailhost")


def run(tmp_path, *args, stdin=""):
    return subprocess.run([sys.executable, MAILHOST, "--config", str(tmp_path / "c.toml"), *args],
                          input=stdin, capture_output=True, text=True, timeout=60, cwd=tmp_path)


def setup(tmp_path):
    (tmp_path / "c.toml").write_text(
        f'[server]\ndomains = ["example.test"]\ndata_dir = "{tmp_path / "data"}"\n')


@defer.inlineCallbacks
def verify(tmp_path, user, password):
    checker = PasswdFileChecker(PasswdFile(str(tmp_path / "data" / "passwd")))
    try:
        result = yield checker.requestAvatarId(UsernamePassword(user, password))
    except UnauthorizedLogin:
        return False
    return result == user


def test_add_list_passwd_del(tmp_path):
    setup(tmp_path)
    r = run(tmp_path, "user", "add", "alice@example.test", "--alias", "info@example.test",
            stdin="first-pw\n")
    assert r.returncode == 0, r.stderr
    assert "added alice@example.test" in r.stdout
    passwd = (tmp_path / "data" / "passwd").read_text()
    assert "first-pw" not in passwd and "$argon2id$" in passwd
    assert "aliases=info@example.test" in passwd

    r = run(tmp_path, "user", "list")
    assert "alice@example.test" in r.stdout and "info@example.test" in r.stdout

    r = run(tmp_path, "user", "add", "alice@example.test", stdin="x\n")
    assert r.returncode == 1 and "exists" in r.stderr

    r = run(tmp_path, "user", "passwd", "alice@example.test", stdin="second-pw\n")
    assert r.returncode == 0
    assert "first-pw" not in (tmp_path / "data" / "passwd").read_text()

    r = run(tmp_path, "user", "del", "alice@example.test")
    assert r.returncode == 0
    assert run(tmp_path, "user", "list").stdout.strip() == ""


@pytest_twisted.inlineCallbacks
def test_password_works_for_login(tmp_path):
    setup(tmp_path)
    run(tmp_path, "user", "add", "bob@example.test", stdin="bob-secret\n")
    assert (yield verify(tmp_path, "bob@example.test", "bob-secret"))
    assert not (yield verify(tmp_path, "bob@example.test", "wrong"))


def test_refuses_bad_input(tmp_path):
    setup(tmp_path)
    assert run(tmp_path, "user", "add", "x@other.test", stdin="pw\n").returncode != 0
    assert run(tmp_path, "user", "add", "../evil@example.test", stdin="pw\n").returncode != 0
    assert run(tmp_path, "user", "add", "empty@example.test", stdin="\n").returncode != 0
    assert run(tmp_path, "user", "del", "ghost@example.test").returncode == 1
    # No password argument exists: argv would leak it to ps.
    r = run(tmp_path, "user", "add", "y@example.test", "--password", "pw")
    assert r.returncode == 2


def test_bad_config_is_one_line(tmp_path):
    (tmp_path / "c.toml").write_text("[smtp]\nmax_recipients = 'many'\n")
    r = run(tmp_path, "user", "list")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "mailhost: config error: smtp.max_recipients: expected an integer, got 'many'"]


def test_check_config_prints_effective_settings(tmp_path):
    setup(tmp_path)
    r = run(tmp_path, "check-config", str(tmp_path / "c.toml"))
    assert r.returncode == 0
    assert "[smtp]" in r.stdout and "max_message_size = 33554432" in r.stdout


def test_cert_selfsigned(tmp_path):
    r = subprocess.run([sys.executable, MAILHOST, "cert", "selfsigned", "--hostname",
                        "mail.example.test", "--out", str(tmp_path / "tls")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((tmp_path / "tls" / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mail.example.test" in names.get_values_for_type(x509.DNSName)
    assert os.stat(tmp_path / "tls" / "key.pem").st_mode & 0o777 == 0o600
