"""Connection limits and rate on a real ``twistd mailhost`` (mailhost.limits as wired
by makeService), from distinct loopback client addresses.

Loopback is exempt by default, so this host sets ``limits.exempt_networks = []``.
Each test uses its own source address, so their counters and buckets do not mix.
"""

from __future__ import annotations

import smtplib
import ssl
import time

import pytest

from tests.security.hosts import HOST, TLSHost
from tests.security.wire import Wire


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = TLSHost(str(tmp_path_factory.mktemp("connlimits")), plaintext="yes", extra={
        "limits": {"exempt_networks": [], "connection_rate": 6.0, "connection_burst": 8},
        "smtp": {"max_connections_per_ip": 2},
        "pop3": {"max_connections_per_ip": 2},
        "imap": {"max_connections_per_ip": 2},
    })
    h.start()
    yield h
    h.kill()


REFUSALS = {
    "smtp": b"421 4.7.0 mx.test Error: too many connections from {ip}\r\n",
    "submission": b"421 4.7.0 mx.test Error: too many connections from {ip}\r\n",
    "pop3": b"-ERR [SYS/TEMP] Too many connections from {ip}\r\n",
    "imap": b"* BYE [UNAVAILABLE] Too many connections from {ip}\r\n",
}


@pytest.mark.parametrize("kind,source", [("smtp", "127.0.0.11"), ("submission", "127.0.0.12"),
                                         ("pop3", "127.0.0.13"), ("imap", "127.0.0.14")])
def test_per_address_limit_refuses_with_the_protocols_own_reply(host, kind, source):
    first, second = Wire(host.ports[kind], source=source), Wire(host.ports[kind], source=source)
    try:
        for w in (first, second):
            assert w.line()[:1] in (b"2", b"+", b"*")
            assert not w.buf
        with Wire(host.ports[kind], source=source) as third:
            got = third.read_to_close()
        assert got == REFUSALS[kind].replace(b"{ip}", source.encode())
        # Another address is not affected.
        with Wire(host.ports[kind], source="127.0.0.15") as other:
            assert other.line()[:1] in (b"2", b"+", b"*")
    finally:
        first.close()
        second.close()


def test_smtplib_sees_421_when_over_the_limit(host):
    source = "127.0.0.16"
    held = [smtplib.SMTP(HOST, host.ports["smtp"], source_address=(source, 0), timeout=10)
            for _ in range(2)]
    try:
        with pytest.raises(smtplib.SMTPConnectError) as e:
            smtplib.SMTP(HOST, host.ports["smtp"], source_address=(source, 0), timeout=10)
        assert e.value.smtp_code == 421
    finally:
        for s in held:
            s.close()


def test_slot_is_freed_when_a_connection_ends(host):
    source = "127.0.0.17"
    a, b = Wire(host.ports["pop3"], source=source), Wire(host.ports["pop3"], source=source)
    a.line()
    b.line()
    a.send(b"QUIT\r\n")
    a.read_to_close()
    a.close()
    deadline = time.monotonic() + 5
    while True:
        with Wire(host.ports["pop3"], source=source) as c:
            line = c.line()
        if line.startswith(b"+OK") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    b.close()
    assert line.startswith(b"+OK"), line


def test_rate_is_one_bucket_per_address_over_all_listeners(host):
    source = "127.0.0.18"
    greetings = []
    # burst 8: spread over four listeners, one connection at a time.
    for kind in ["smtp", "submission", "pop3", "imap"] * 2:
        with Wire(host.ports[kind], source=source) as w:
            greetings.append(w.line())
    assert all(g[:1] in (b"2", b"+", b"*") and b"Too many" not in g for g in greetings)
    with Wire(host.ports["imap"], source=source) as w:
        assert w.read_to_close() == (b"* BYE [UNAVAILABLE] Too many new connections from "
                                     + source.encode() + b"; slow down\r\n")
    with Wire(host.ports["smtp"], source=source) as w:
        assert w.read_to_close() == (b"421 4.7.0 mx.test Error: too many new connections from "
                                     + source.encode() + b"; slow down\r\n")


@pytest.mark.parametrize("kind,source", [("imap", "127.0.0.21"), ("pop3", "127.0.0.22"),
                                         ("submission", "127.0.0.23")])
def test_implicit_tls_listener_refuses_inside_tls(host, kind, source):
    ctx = ssl.create_default_context(cafile=host.cafile)

    def tls_wire() -> Wire:
        w = Wire(host.tls_ports[kind], source=source)
        w.starttls(ctx)
        return w

    held = [tls_wire(), tls_wire()]
    try:
        for w in held:
            assert w.line()[:1] in (b"2", b"+", b"*")
        third = tls_wire()
        got = third.read_to_close()
        third.close()
        assert got == REFUSALS[kind].replace(b"{ip}", source.encode())
    finally:
        for w in held:
            w.close()


def test_refusals_are_logged_with_the_client_address(host):
    with Wire(host.ports["imap"], source="127.0.0.24") as a, \
            Wire(host.ports["imap"], source="127.0.0.24") as b:
        a.line()
        b.line()
        with Wire(host.ports["imap"], source="127.0.0.24") as c:
            c.read_to_close()
    deadline = time.monotonic() + 5
    while "client=127.0.0.24" not in host.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "connection refused kind=imap client=127.0.0.24 reason=max_connections_per_ip" \
        in host.log_text()
