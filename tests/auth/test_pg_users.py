"""``[auth] backend = "postgresql"``: users, hashes and aliases in the ``users`` table,
managed by the same ``mailhost user …`` commands (run as subprocesses, as an admin
does), and a running node hears of a change made elsewhere without a restart."""

from __future__ import annotations

import imaplib
import os
import smtplib
import subprocess
import sys
import time

import psycopg
import pytest_twisted
from twisted.internet import reactor, task, threads

from mailhost.db import migrations
from mailhost.service import makeService
from tests.e2e.test_foreign_store import config_in

MAILHOST = os.path.join(os.path.dirname(sys.executable), "mailhost")


def run(tmp_path, *args, stdin=""):
    return subprocess.run([sys.executable, MAILHOST, "--config", str(tmp_path / "c.toml"), *args],
                          input=stdin, capture_output=True, text=True, timeout=60, cwd=tmp_path)


def setup(tmp_path, dsn):
    with psycopg.connect(dsn) as conn:
        migrations.upgrade(conn)
    (tmp_path / "c.toml").write_text(
        f'[server]\ndomains = ["example.test"]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\n[auth]\nbackend = "postgresql"\n')


def test_user_commands_manage_the_users_table(tmp_path, pg_dsn):
    setup(tmp_path, pg_dsn)
    r = run(tmp_path, "user", "add", "alice@example.test", "--alias", "al@example.test",
            stdin="pw1\n")
    assert r.returncode == 0, r.stderr
    assert run(tmp_path, "user", "add", "bob@example.test", stdin="pw2\n").returncode == 0
    assert run(tmp_path, "user", "add", "bob@example.test", stdin="pw2\n").returncode == 1
    r = run(tmp_path, "user", "list")
    assert r.stdout.splitlines() == ["alice@example.test  (aliases: al@example.test)",
                                     "bob@example.test"]
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT name, password_hash LIKE '$argon2id$%', extra"
                            " FROM users ORDER BY name").fetchall()
    assert rows == [("alice@example.test", True, {"aliases": "al@example.test"}),
                    ("bob@example.test", True, {})]
    assert run(tmp_path, "user", "del", "bob@example.test").returncode == 0
    assert run(tmp_path, "user", "list").stdout.splitlines() == [
        "alice@example.test  (aliases: al@example.test)"]
    assert not (tmp_path / "data" / "passwd").exists()


def imap_login(port: int, user: str, password: str) -> bool:
    m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    try:
        m.login(user, password)
        return True
    except imaplib.IMAP4.error:
        return False
    finally:
        m.shutdown()


@pytest_twisted.inlineCallbacks
def test_a_running_node_hears_a_user_added_on_another_machine(tmp_path, pg_dsn):
    setup(tmp_path, pg_dsn)
    config = config_in(str(tmp_path / "node"))
    config.store.backend = config.auth.backend = "postgresql"
    config.store.dsn = pg_dsn
    config.auth.create_postmaster = False
    svc = makeService(config)
    svc.startService()
    try:
        ports = yield svc.wait_listening()
        imap = ports["imap"][0].getHost().port
        assert not (yield threads.deferToThread(imap_login, imap, "carol@example.test", "pw3"))
        r = yield threads.deferToThread(run, tmp_path, "user", "add", "carol@example.test",
                                        stdin="pw3\n")
        assert r.returncode == 0, r.stderr
        added = time.monotonic()
        while not svc.directory.user_exists("carol@example.test"):
            assert time.monotonic() - added < 5, "the node never heard of the new user"
            yield task.deferLater(reactor, 0.05, lambda: None)
        assert (yield threads.deferToThread(imap_login, imap, "carol@example.test", "pw3"))
    finally:
        yield svc.stopService()


@pytest_twisted.inlineCallbacks
def test_user_alias_edits_the_users_table_and_a_running_node_delivers_to_it(tmp_path, pg_dsn):
    setup(tmp_path, pg_dsn)
    assert run(tmp_path, "user", "add", "alice@example.test", stdin="pw1\n").returncode == 0
    assert run(tmp_path, "user", "add", "bob@example.test", "--alias", "b@example.test",
               stdin="pw2\n").returncode == 0
    config = config_in(str(tmp_path / "node"))
    config.store.backend = config.auth.backend = "postgresql"
    config.store.dsn = pg_dsn
    svc = makeService(config)
    svc.startService()
    try:
        ports = yield svc.wait_listening()
        smtp = ports["smtp"][0].getHost().port

        def rcpt(address: str) -> int:
            with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as s:
                s.ehlo("client.test")
                s.mail("carol@remote.test")
                return s.rcpt(address)[0]

        assert (yield threads.deferToThread(rcpt, "team@example.test")) == 550
        r = yield threads.deferToThread(run, tmp_path, "user", "alias", "alice@example.test",
                                        "--add", "team@example.test", "--add", "a@example.test")
        assert r.returncode == 0 and r.stdout == (
            "alice@example.test: team@example.test, a@example.test\n"), r.stderr
        for _ in range(50):  # the node hears of it by NOTIFY
            if (yield threads.deferToThread(rcpt, "team@example.test")) == 250:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        else:
            raise AssertionError("the running node never took the new alias")
        taken = yield threads.deferToThread(run, tmp_path, "user", "alias", "alice@example.test",
                                            "--add", "b@example.test")
        assert taken.returncode == 1 and "another user has that alias" in taken.stderr
        r = yield threads.deferToThread(run, tmp_path, "user", "alias", "alice@example.test",
                                        "--del", "team@example.test")
        assert r.stdout == "alice@example.test: a@example.test\n"
    finally:
        yield svc.stopService()
    with psycopg.connect(pg_dsn) as conn:
        extra = conn.execute("SELECT extra FROM users WHERE name = 'alice@example.test'"
                             ).fetchone()[0]
    assert extra == {"aliases": "a@example.test"}
