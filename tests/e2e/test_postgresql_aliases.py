"""Aliases in PostgreSQL (issue 19): with ``[auth] backend = "postgresql"`` the lists
and catch-alls of the aliases file are rows of the ``aliases`` table (schema 6),
managed by ``mailhost alias`` on any machine, and every running node delivers by them
without a restart (NOTIFY). Two ``twistd mailhost`` nodes, real SMTP and IMAP.
"""

from __future__ import annotations

import imaplib
import smtplib
import subprocess
import sys
import time

import psycopg

from mailhost.auth.hashing import hash_password
from mailhost.auth.passwd import PasswdEntry
from mailhost.auth.pg_users import PostgresUsers
from mailhost.db import migrations

USERS = {"alice@example.test": "alice-pw", "bob@example.test": "bob-pw"}


def alias(node, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailhost.cli.main", "--config",
                           node.config_path, "alias", *args],
                          capture_output=True, text=True, timeout=60)


def rcpt(node, address: str) -> int:
    with smtplib.SMTP(node.host, node.ports["smtp"], timeout=30) as s:
        s.ehlo("client.test")
        s.mail("carol@remote.test")
        return s.rcpt(address)[0]


def until_rcpt(node, address: str, code: int) -> None:
    """The node answers ``code`` to RCPT ``address`` (it hears of a change by NOTIFY)."""
    deadline = time.monotonic() + 10
    while (got := rcpt(node, address)) != code:
        assert time.monotonic() < deadline, f"{node.host}: RCPT {address} still {got}"
        time.sleep(0.1)


def send(node, to: str, subject: str) -> None:
    with smtplib.SMTP(node.host, node.ports["smtp"], timeout=30) as s:
        s.sendmail("carol@remote.test", [to],
                   f"From: carol@remote.test\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nx\r\n")


def subjects(node, user: str) -> list[str]:
    m = imaplib.IMAP4(node.host, node.ports["imap"], timeout=30)
    m.login(user, USERS[user])
    typ, data = m.select("INBOX")
    found = []
    if data[0] != b"0":
        typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        found = [part[1].decode().split(":", 1)[1].strip() for part in data
                 if isinstance(part, tuple)]
    m.logout()
    return found


def test_aliases_and_catch_alls_in_the_database_reach_every_running_node(mailhost_factory,
                                                                         pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        migrations.upgrade(conn)
    PostgresUsers(pg_dsn).save({u: PasswdEntry(u, hash_password(p)) for u, p in USERS.items()})
    shared = {"store": {"backend": "postgresql", "dsn": pg_dsn},
              "auth": {"backend": "postgresql"}}
    a = mailhost_factory("a", host="127.0.0.1", users={}, extra=shared).start()
    b = mailhost_factory("b", host="127.0.0.2", users={}, extra=shared).start()

    assert rcpt(b, "team@example.test") == 550
    r = alias(a, "add", "team@example.test", "alice@example.test", "Bob@Example.test")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "team@example.test: alice@example.test, bob@example.test\n"
    until_rcpt(b, "team@example.test", 250)  # node B, told by NOTIFY: no restart
    send(b, "team@example.test", "to the team")

    # A catch-all: an address nobody claims goes to alice; bob's own mail stays his.
    assert rcpt(a, "nobody@example.test") == 550
    assert alias(b, "add", "@example.test", "alice@example.test").returncode == 0
    until_rcpt(a, "nobody@example.test", 250)
    send(a, "nobody@example.test", "to nobody")
    send(a, "bob@example.test", "to bob")
    assert subjects(a, "alice@example.test") == ["to the team", "to nobody"]
    assert subjects(b, "bob@example.test") == ["to the team", "to bob"]

    listed = alias(a, "list")
    assert listed.stdout.splitlines() == [
        "@example.test: alice@example.test",
        "team@example.test: alice@example.test, bob@example.test"], listed
    refused = alias(a, "add", "alice@example.test", "bob@example.test")
    assert refused.returncode != 0 and "is a user" in refused.stderr
    refused = alias(a, "add", "team@elsewhere.test", "bob@example.test")
    assert refused.returncode != 0 and "not a local domain" in refused.stderr

    # Removing: one target, then the catch-all, then the whole alias.
    r = alias(a, "del", "team@example.test", "bob@example.test")
    assert r.stdout == "team@example.test: alice@example.test\n", r
    assert alias(a, "del", "@example.test").stdout == "deleted @example.test\n"
    until_rcpt(b, "nobody@example.test", 550)
    assert alias(a, "del", "team@example.test").returncode == 0
    until_rcpt(b, "team@example.test", 550)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM aliases").fetchone()[0] == 0
