"""Two mailhost nodes on one PostgreSQL database (issue 19): two ``twistd mailhost``
processes, on 127.0.0.1 and 127.0.0.2, with real clients.

- SMTP to node A; an IMAP client IDLE on node B hears ``EXISTS`` within a second
  (LISTEN/NOTIFY), and POP3 on A and IMAP on B agree on what is there.
- A node whose database has no schema, or another version's, exits at start with one
  line saying so.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import time

import psycopg

from mailhost.db import migrations

USER, PASSWORD = "alice@example.test", "alice-pw"
MSG = b"Subject: across nodes\r\nFrom: bob@remote.test\r\n\r\nfrom node A\r\n"


def nodes(mailhost_factory, dsn):
    store = {"store": {"backend": "postgresql", "dsn": dsn}}
    a = mailhost_factory("a", host="127.0.0.1", extra=store).start()
    b = mailhost_factory("b", host="127.0.0.2", extra=store).start()
    return a, b


def upgraded(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        migrations.upgrade(conn)
    return dsn


def read_until(m: imaplib.IMAP4, word: bytes, deadline: float) -> bytes:
    """IMAP lines until one contains ``word`` (bounded by ``deadline``)."""
    seen = b""
    while time.monotonic() < deadline:
        m.sock.settimeout(max(0.05, deadline - time.monotonic()))
        line = m.readline()
        seen += line
        if word in line:
            return line
    raise AssertionError(f"no {word!r} before the deadline; saw {seen!r}")


def test_idle_on_node_b_hears_smtp_delivery_on_node_a_within_a_second(mailhost_factory,
                                                                       pg_dsn):
    a, b = nodes(mailhost_factory, upgraded(pg_dsn))
    m = imaplib.IMAP4(b.host, b.ports["imap"], timeout=30)
    m.login(USER, PASSWORD)
    assert m.select("INBOX") == ("OK", [b"0"])
    m.send(b"i1 IDLE\r\n")
    assert m.readline().startswith(b"+")
    time.sleep(0.5)  # B's LISTEN connection is up long before (it starts with the node)
    with smtplib.SMTP(a.host, a.ports["smtp"], timeout=30) as s:
        s.sendmail("bob@remote.test", [USER], MSG)
    delivered = time.monotonic()
    line = read_until(m, b"EXISTS", delivered + 5.0)
    heard = time.monotonic() - delivered
    assert line.strip() == b"* 1 EXISTS"
    assert heard < 1.0, heard
    m.send(b"DONE\r\n")
    assert read_until(m, b"i1 OK", time.monotonic() + 5.0)

    # POP3 on A and IMAP on B agree: the same message, byte for byte.
    p = poplib.POP3(a.host, a.ports["pop3"], timeout=30)
    p.user(USER)
    p.pass_(PASSWORD)
    assert p.stat()[0] == 1
    popped = b"\r\n".join(p.retr(1)[1]) + b"\r\n"
    p.quit()
    typ, data = m.uid("FETCH", "1", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1] == popped and popped.endswith(MSG)
    # The \Seen that POP3's RETR set on A reaches B (through NOTIFY, so after A's QUIT
    # answered, not before it: within a second, as a delivery does; 2 s on a loaded machine).
    until = time.monotonic() + 2.0
    while True:
        typ, data = m.uid("FETCH", "1", "(FLAGS)")
        if b"\\Seen" in data[0] or time.monotonic() > until:
            break
        time.sleep(0.05)
    assert b"\\Seen" in data[0]
    m.logout()


def test_a_node_exits_at_start_on_a_schema_not_its_own(mailhost_factory, pg_dsn):
    node = mailhost_factory("a", extra={"store": {"backend": "postgresql", "dsn": pg_dsn}})
    try:
        node.start(timeout=20)
    except RuntimeError as e:
        text = str(e)
    else:
        raise AssertionError("mailhost started on a database without its schema")
    assert node.proc.returncode != 0
    assert "mailhost: config error: store.dsn: the database has no mailhost schema; " \
           "run 'mailhost db upgrade'" in text
    assert "Traceback" not in text
