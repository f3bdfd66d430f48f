"""Every name the CLI accepts, the server can serve (issue 17, items 2 and 11).

Before the fix ``mailhost user add`` wrote whatever it was given: ``a@b@example.test``,
a 200-character local part (accepted at RCPT, then ``451 4.3.0`` with a ``#critical``
traceback for every message, retried by the sender for days), ``x,y@example.test``,
and ``--alias`` values holding ``:`` (the user vanished at the next read), a newline
(a whole injected passwd line) or a foreign domain (which then passed
``submission.enforce_sender``). Now one validation
(``mailhost.store.names.check_address``) serves the CLI, the passwd loader and
writer, and the store: the CLI refuses with one line, the loader skips such lines
with one log line, and the server answers them cleanly.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys

import pytest

from mailhost.auth.hashing import hash_password
from tests.mailhost_process import MailHostProcess

MAILHOST = os.path.join(os.path.dirname(sys.executable), "mailhost")
LONG = "x" * 200 + "@example.test"
HASH = hash_password("pw")


def cli(tmp_path, *args, stdin="pw\n"):
    return subprocess.run([sys.executable, MAILHOST, "--config", str(tmp_path / "c.toml"), *args],
                          input=stdin, capture_output=True, text=True, timeout=60, cwd=tmp_path)


@pytest.fixture
def admin(tmp_path):
    (tmp_path / "c.toml").write_text(
        f'[server]\ndomains = ["example.test"]\ndata_dir = "{tmp_path / "data"}"\n')
    r = cli(tmp_path, "user", "add", "alice@example.test")
    assert r.returncode == 0, r.stderr
    return tmp_path


@pytest.mark.parametrize("args", [
    ["a@b@example.test"],
    [LONG],
    ["x,y@example.test"],
    ["bob@example.test", "--alias", "info:x@example.test"],
    ["bob@example.test", "--alias", "info@example.test\nmallory@example.test:" + HASH],
    ["bob@example.test", "--alias", "evil@other.test"],
    ["bob@example.test", "--alias", "a@example.test,b@example.test"],
    ["bob@example.test", "--alias", "alice@example.test"],
], ids=["two-ats", "200-char-local", "comma", "alias-colon", "alias-newline",
        "alias-foreign-domain", "alias-list", "alias-is-a-user"])
def test_cli_refuses_names_the_server_cannot_serve(admin, args):
    passwd = admin / "data" / "passwd"
    before = passwd.read_bytes()
    r = cli(admin, "user", "add", *args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mailhost: "), r.stderr
    assert "Traceback" not in r.stderr
    assert passwd.read_bytes() == before  # nothing written, not even a partial line
    listed = cli(admin, "user", "list").stdout.split()
    assert listed == ["alice@example.test"]


def test_cli_accepts_a_good_alias(admin):
    r = cli(admin, "user", "add", "bob@example.test", "--alias", "Info@Example.test",
            "--alias", "sales@example.test")
    assert r.returncode == 0, r.stderr
    assert "bob@example.test:" in (admin / "data" / "passwd").read_text()
    assert "aliases=info@example.test,sales@example.test" in (admin / "data" / "passwd").read_text()


# -- the running server, with a passwd file edited by hand (the CLI would refuse) --------

BAD_LINES = [
    f"a@b@example.test:{HASH}",
    f"{LONG}:{HASH}",
    f"x,y@example.test:{HASH}",
    f"carol@example.test:{HASH}:aliases=ok@example.test,bad:x@example.test",
    f"dave@example.test:{HASH}:aliases=evil@other.test",
    f"alice@example.test:{HASH}",  # a second line for alice: the first one wins
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    h = MailHostProcess(str(tmp_path_factory.mktemp("names")),
                        users={"alice@example.test": "alice-pw", "bob@example.test": "bob-pw"},
                        extra={"smtp": {"error_sleep_time": 0}})
    h.configure()
    with open(os.path.join(h.data_dir, "passwd"), "a") as f:
        f.write("\n".join(BAD_LINES) + "\n")
    h.start()
    yield h
    h.kill()


def full_log(h) -> str:
    with open(h.log_path, errors="replace") as f:
        return f.read()


def rcpt(h, address):
    with smtplib.SMTP(h.host, h.ports["smtp"], timeout=30) as s:
        s.ehlo("client.example")
        s.mail("someone@remote.test")
        return s.rcpt(address)


def test_server_skips_each_bad_passwd_line_with_one_log_line(server):
    rcpt(server, "bob@example.test")  # the first lookup reads the file
    log = full_log(server)
    # dave's line is well-formed: its foreign alias is ignored by the directory (below)
    assert log.count("line ignored") == len(BAD_LINES) - 1, log
    assert "Traceback" not in log and "#critical" not in log


@pytest.mark.parametrize("address", [LONG, "x,y@example.test"])
def test_bad_names_are_unknown_users_not_451(server, address):
    code, _ = rcpt(server, address)
    assert code in (550, 501, 553)


def test_reported_long_local_part_is_refused_before_data(server):
    with smtplib.SMTP(server.host, server.ports["smtp"], timeout=30) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("someone@remote.test", [LONG], b"Subject: t\r\n\r\nbody\r\n")
    assert "#critical" not in full_log(server)


def test_good_users_still_served(server):
    assert rcpt(server, "bob@example.test")[0] == 250
    assert rcpt(server, "alice@example.test")[0] == 250


def test_foreign_domain_alias_does_not_pass_enforce_sender(server):
    with smtplib.SMTP(server.host, server.ports["submission"], timeout=30) as s:
        s.ehlo("client.example")
        s.login("dave@example.test", "pw")
        code, text = s.mail("evil@other.test")
        assert code == 553, text
        s.rset()
        assert s.mail("dave@example.test")[0] == 250


def test_injected_duplicate_line_cannot_take_over_a_user(server):
    with smtplib.SMTP(server.host, server.ports["submission"], timeout=30) as s:
        s.ehlo("client.example")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("alice@example.test", "pw")  # the appended line's password
        s.login("alice@example.test", "alice-pw")
