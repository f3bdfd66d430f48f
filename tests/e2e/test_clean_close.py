"""A session over TLS ends with close_notify and a FIN, never a reset.

Regression tests for issue 13: mbsync printed "Connection reset by peer" after a
clean ``LOGOUT`` against our IMAP server. Over TLS the server sent ``* BYE`` and the
tagged OK, then nothing: Twisted's TLS transport starts its close only once no
producer is registered, and the IMAP session's output gate stayed registered, so
the connection sat until the 10 s close grace aborted it (SO_LINGER 0: a reset).
POP3 ``QUIT``, SMTP ``QUIT`` and the goodbye of a graceful stop are checked the same way.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import signal
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from mailhost.tls import write_selfsigned
from tests.mailhost_process import free_port

# Well under the IMAP server's 10 s close grace, which ends a stuck close by reset.
PROMPT = 5.0


@pytest.fixture
def tls_host(mailhost_factory, tmp_path):
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    write_selfsigned("localhost", cert, key)
    tls_ports = {"imap": free_port(), "pop3": free_port()}
    proc = mailhost_factory(extra={
        "tls": {"cert": cert, "key": key},
        "imap": {"listen_tls": [f"tcp:{tls_ports['imap']}:interface=127.0.0.1"]},
        "pop3": {"listen_tls": [f"tcp:{tls_ports['pop3']}:interface=127.0.0.1"]},
        "server": {"shutdown_grace": 5.0},
    }).start()
    proc.tls_ports = tls_ports
    proc.cert = cert
    with smtplib.SMTP("127.0.0.1", proc.ports["smtp"], timeout=30) as s:
        for i in range(3):
            s.sendmail("x@far.test", ["alice@example.test"], f"Subject: {i}\r\n\r\nhi\r\n")
    return proc


def assert_clean_end(sock: ssl.SSLSocket) -> None:
    """The server starts the close, promptly and without being asked: its
    close_notify arrives (a read gives EOF and ``unwrap`` then completes, which it
    cannot after a bare TCP close), then its FIN: the plain socket reads EOF, not
    ECONNRESET. (A client that sends close_notify first, as ``unwrap`` alone would,
    gets an answer even from the old server; mbsync waits for the server.)"""
    sock.settimeout(PROMPT)
    start = time.monotonic()
    assert sock.recv(1) == b""
    plain = sock.unwrap()
    try:
        assert plain.recv(1) == b""
    finally:
        plain.close()
    assert time.monotonic() - start < PROMPT


@pytest.mark.parametrize("mode", ["STARTTLS", "IMAPS"])
def test_mbsync_logout_over_tls_is_not_reset(tls_host, tmp_path, mode):
    port = tls_host.ports["imap"] if mode == "STARTTLS" else tls_host.tls_ports["imap"]
    local = tmp_path / f"local-{mode}"
    local.mkdir()
    rc = tmp_path / f"mbsyncrc-{mode}"
    rc.write_text(
        f"IMAPAccount mh\nHost localhost\nPort {port}\nUser alice@example.test\n"
        f"Pass alice-pw\nSSLType {mode}\nCertificateFile {tls_host.cert}\nAuthMechs LOGIN\n\n"
        "IMAPStore mh-remote\nAccount mh\n\n"
        f"MaildirStore mh-local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
        "Channel mh\nFar :mh-remote:\nNear :mh-local:\nPatterns *\nCreate Both\n"
        "Expunge Both\nSyncState *\n")
    for _ in range(2):  # the first run copies, the second only compares
        start = time.monotonic()
        res = subprocess.run(["mbsync", "-c", str(rc), "-a"], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0, res.stderr
        assert "reset" not in res.stderr.lower(), res.stderr
        assert "error" not in res.stderr.lower(), res.stderr
        assert time.monotonic() - start < PROMPT, "the server did not close after LOGOUT"
    assert len(os.listdir(local / "INBOX" / "cur")) + len(os.listdir(local / "INBOX" / "new")) == 3


def _ctx(cert: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cert)


def test_imap_logout_sends_close_notify(tls_host):
    for implicit in (False, True):
        if implicit:
            client = imaplib.IMAP4_SSL("localhost", tls_host.tls_ports["imap"],
                                       ssl_context=_ctx(tls_host.cert), timeout=30)
        else:
            client = imaplib.IMAP4("localhost", tls_host.ports["imap"], timeout=30)
            client.starttls(_ctx(tls_host.cert))
        client.login("alice@example.test", "alice-pw")
        client.select("INBOX")
        tag = client._new_tag()  # imaplib's logout() closes the socket at once
        client.send(tag + b" LOGOUT\r\n")
        lines = [client.readline() for _ in range(2)]
        assert lines[0].startswith(b"* BYE") and lines[1].startswith(tag + b" OK"), lines
        assert_clean_end(client.sock)


def test_pop3_quit_sends_close_notify(tls_host):
    for implicit in (False, True):
        if implicit:
            client = poplib.POP3_SSL("localhost", tls_host.tls_ports["pop3"],
                                     context=_ctx(tls_host.cert), timeout=30)
        else:
            client = poplib.POP3("localhost", tls_host.ports["pop3"], timeout=30)
            client.stls(_ctx(tls_host.cert))
        client.user("alice@example.test")
        client.pass_("alice-pw")
        client.retr(1)
        client._putcmd("QUIT")
        assert client._getresp().startswith(b"+OK")
        assert_clean_end(client.sock)


def test_smtp_quit_sends_close_notify(tls_host):
    client = smtplib.SMTP("localhost", tls_host.ports["smtp"], timeout=30)
    client.starttls(context=_ctx(tls_host.cert))
    client.sendmail("x@far.test", ["alice@example.test"], b"Subject: tls\r\n\r\nhi\r\n")
    client.putcmd("QUIT")
    assert client.getreply()[0] == 221
    assert_clean_end(client.sock)


def test_graceful_stop_says_bye_over_tls_then_closes_cleanly(tls_host):
    """SIGTERM: an idle IMAPS client gets ``* BYE``, close_notify and a FIN."""
    raw = socket.create_connection(("127.0.0.1", tls_host.tls_ports["imap"]), timeout=30)
    client = _ctx(tls_host.cert).wrap_socket(raw, server_hostname="localhost")
    f = client.makefile("rb")
    assert f.readline().startswith(b"* OK")
    client.sendall(b"a LOGIN alice@example.test alice-pw\r\n")
    assert f.readline().startswith(b"a OK")
    tls_host.proc.send_signal(signal.SIGTERM)
    assert f.readline().startswith(b"* BYE")
    f.close()
    assert_clean_end(client)
    tls_host.proc.wait(30)
