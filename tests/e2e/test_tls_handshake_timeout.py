"""A client that never finishes the TLS handshake is disconnected after
``tls.handshake_timeout``, on implicit-TLS ports and after STARTTLS/STLS; a client
that did finish is not. (Before, closing politely waited for the handshake forever,
so such a client held its connection slot past every timeout.)"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
import ssl
import time

import pytest

from mailhost.tls import write_selfsigned
from tests.mailhost_process import free_port

pytestmark = pytest.mark.slow

DEADLINE = 1.0
STARTTLS = {"smtp": [b"EHLO x\r\n", b"STARTTLS\r\n"], "pop3": [b"STLS\r\n"],
            "imap": [b"a STARTTLS\r\n"]}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    from tests.mailhost_process import MailHostProcess

    wd = tmp_path_factory.mktemp("tlsdeadline")
    cert, key = str(wd / "cert.pem"), str(wd / "key.pem")
    write_selfsigned("localhost", cert, key)
    tls_ports = {k: free_port() for k in ("submission", "imap", "pop3")}
    proc = MailHostProcess(str(wd), extra={
        "tls": {"cert": cert, "key": key, "handshake_timeout": DEADLINE},
        "submission": {"listen_tls": [f"tcp:{tls_ports['submission']}:interface=127.0.0.1"]},
        "imap": {"listen_tls": [f"tcp:{tls_ports['imap']}:interface=127.0.0.1"]},
        "pop3": {"listen_tls": [f"tcp:{tls_ports['pop3']}:interface=127.0.0.1"]},
    }).start()
    proc.tls_ports, proc.cafile = tls_ports, cert
    yield proc
    proc.kill()


def closed_within(sock: socket.socket, limit: float) -> float:
    """Seconds until the server ends the connection (fails after ``limit``)."""
    sock.settimeout(limit)
    t0 = time.monotonic()
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"still connected after {limit} s")
    return time.monotonic() - t0


@pytest.mark.parametrize("kind", ["submission", "imap", "pop3"])
def test_silent_client_of_an_implicit_tls_port_is_cut(host, kind):
    with socket.create_connection(("127.0.0.1", host.tls_ports[kind])) as s:
        assert closed_within(s, 15) >= DEADLINE * 0.8


@pytest.mark.parametrize("kind", ["smtp", "imap", "pop3"])
def test_client_silent_after_starttls_is_cut(host, kind):
    with socket.create_connection(("127.0.0.1", host.ports[kind])) as s:
        s.settimeout(10)
        s.recv(4096)
        for line in STARTTLS[kind]:
            s.sendall(line)
            reply = b""
            while not reply.endswith(b"\r\n"):
                reply += s.recv(4096)
        assert reply[:1] in (b"2", b"+", b"a")  # 220 / +OK / a OK: TLS may start
        closed_within(s, 15)


def test_finished_handshakes_outlive_the_deadline(host):
    ctx = ssl.create_default_context(cafile=host.cafile)
    smtps = smtplib.SMTP_SSL("localhost", host.tls_ports["submission"], context=ctx, timeout=10)
    starttls = smtplib.SMTP("localhost", host.ports["smtp"], timeout=10)
    starttls.starttls(context=ctx)
    imaps = imaplib.IMAP4_SSL("localhost", host.tls_ports["imap"], ssl_context=ctx, timeout=10)
    pop3s = poplib.POP3_SSL("localhost", host.tls_ports["pop3"], context=ctx, timeout=10)
    time.sleep(DEADLINE * 2)
    assert smtps.noop()[0] == 250 and starttls.noop()[0] == 250
    assert imaps.noop()[0] == "OK" and "USER" in pop3s.capa()
    imaps.login("alice@example.test", "alice-pw")
    assert imaps.select("INBOX")[0] == "OK"
    for c in (smtps, starttls):
        c.quit()
    imaps.logout()
    pop3s.quit()
