"""POP3 against a real ``twistd -n mailhost``, with mail delivered over SMTP by smtplib."""

from __future__ import annotations

import os
import poplib
import smtplib
import ssl
import subprocess

from mailhost.tls import write_selfsigned
from tests.mailhost_process import free_port
from tests.pop3.pop3_clients import fetchmail

BODIES = [
    b"Subject: one\r\n\r\n.starts with a dot\r\nplain\r\n..two dots\r\n",
    b"Subject: two\r\n\r\n" + b"".join(b".line %d\r\n" % i for i in range(5000)),
    b"Subject: three\r\n\r\nshort\r\n",
]


def send(proc, bodies=BODIES, rcpt="alice@example.test") -> None:
    with smtplib.SMTP("127.0.0.1", proc.ports["smtp"], timeout=30) as smtp:
        for body in bodies:
            smtp.sendmail("sender@remote.test", [rcpt], body)


def pop(proc, user="alice@example.test", password="alice-pw") -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", proc.ports["pop3"], timeout=30)
    client.user(user)
    client.pass_(password)
    return client


def maildir_files(proc, user="alice@example.test") -> list[str]:
    root = proc.maildir(user)
    return [f for sub in ("new", "cur") for f in os.listdir(os.path.join(root, sub))]


def test_smtp_in_pop3_out_byte_exact(mailhost_proc):
    send(mailhost_proc)
    c = pop(mailhost_proc)
    count, _octets = c.stat()
    assert count == 3
    sizes = [int(line.split()[1]) for line in c.list()[1]]
    for n, body in enumerate(BODIES, 1):
        lines = c.retr(n)[1]
        message = b"\r\n".join(lines) + b"\r\n"
        assert message.endswith(b"\r\n" + body)  # after the Received:/Return-Path: trace
        assert len(message) == sizes[n - 1]  # LIST size == octets RETR sent, unstuffed
    top = c.top(2, 3)[1]
    assert top[-4:] == [b"", b".line 0", b".line 1", b".line 2"]
    c.dele(2)
    assert c.quit().startswith(b"+OK")
    assert len(maildir_files(mailhost_proc)) == 2
    c = pop(mailhost_proc)
    assert c.stat()[0] == 2
    c.quit()


def test_uidl_survives_a_restart(mailhost_proc):
    send(mailhost_proc)
    c = pop(mailhost_proc)
    before = c.uidl()[1]
    c.retr(1)
    c.quit()
    mailhost_proc.stop()
    mailhost_proc.start()
    c = pop(mailhost_proc)
    after = c.uidl()[1]
    c.quit()
    assert before == after and len(set(before)) == 3


def test_fetchmail_keep_then_delete(mailhost_proc, tmp_path):
    send(mailhost_proc)
    home = str(tmp_path / "fm")
    os.makedirs(home)
    port = mailhost_proc.ports["pop3"]

    def run(keep: bool) -> subprocess.CompletedProcess:
        # the helper logs in as alice with password "secret"; this host's is "alice-pw"
        return fetchmail(home, port, keep, password="alice-pw")

    first = run(True)
    assert first.returncode == 0, first.stderr
    with open(os.path.join(home, "out"), "rb") as f:
        got = f.read()
    for body in BODIES:
        assert body.replace(b"\r\n", b"\n") in got
    second = run(True)
    assert second.returncode == 1, second.stderr  # nothing new
    assert len(maildir_files(mailhost_proc)) == 3
    send(mailhost_proc, [b"Subject: four\r\n\r\nlate\r\n"])
    third = run(False)  # delete mode fetches the new one and deletes everything it saw
    assert third.returncode == 0, third.stderr
    with open(os.path.join(home, "out"), "rb") as f:
        assert f.read().count(b"Subject: four") == 1
    # fetchmail deletes only what it fetched in that run unless told to flush
    assert len(maildir_files(mailhost_proc)) == 3


def test_stls_and_implicit_tls_through_the_service(mailhost_factory, tmp_path):
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    write_selfsigned("localhost", cert, key)
    tls_port = free_port()
    proc = mailhost_factory(extra={
        "server": {"allow_plaintext_auth": "no"},
        "tls": {"cert": cert, "key": key},
        "pop3": {"listen_tls": [f"tcp:{tls_port}:interface=127.0.0.1"]},
    }).start()
    send(proc, BODIES[:1])
    ctx = ssl.create_default_context(cafile=cert)

    plain = poplib.POP3("127.0.0.1", proc.ports["pop3"], timeout=30)
    assert "STLS" in plain.capa() and "USER" not in plain.capa()
    try:
        plain.user("alice@example.test")
    except poplib.error_proto as e:
        assert e.args[0].startswith(b"-ERR [AUTH] Plaintext authentication disallowed")
    else:
        raise AssertionError("USER accepted in the clear")
    plain.stls(ctx)
    plain.user("alice@example.test")
    plain.pass_("alice-pw")
    assert b"\r\n".join(plain.retr(1)[1]).endswith(BODIES[0].rstrip(b"\r\n"))
    plain.quit()

    implicit = poplib.POP3_SSL("localhost", tls_port, context=ctx, timeout=30)
    capa = implicit.capa()
    assert "STLS" not in capa and "USER" in capa
    implicit.user("alice@example.test")
    implicit.pass_("alice-pw")
    assert implicit.stat()[0] == 1
    implicit.quit()
