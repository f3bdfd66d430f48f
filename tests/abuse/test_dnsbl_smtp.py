"""DNSBL and DNSWL over real SMTP: refused at RCPT with the list's text, allowlists,
IPv6 query names, DNS timeouts that never refuse, authenticated clients exempt."""

from __future__ import annotations

import smtplib
import socket
import subprocess

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.abuse.conftest import send

ZONE = "zen.example=127.0.0.2-127.0.0.11"
TEXT = "Listed by zen.example, see https://zen.example/lookup?127.0.0.1"


def listed(dns_server, ip_name: str = "1.0.0.127", code: str = "127.0.0.2",
           zone: str = "zen.example", text: str = TEXT) -> None:
    dns_server.zones[f"{ip_name}.{zone}"] = {"A": [code], "TXT": [text]}


@pytest_twisted.ensureDeferred
async def test_dnsbl_hit_gets_554_5_7_1_with_the_lists_text(make_host, dns_server):
    listed(dns_server)
    host = make_host()
    host.config.dnsbl.zones = [ZONE]
    await host.start()
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        await threads.deferToThread(send, host, "x@sender.test", ["alice@example.test"])
    code, text = e.value.recipients["alice@example.test"]
    assert code == 554
    assert text == (b"5.7.1 Service unavailable; client [127.0.0.1] blocked using "
                    b"zen.example; " + TEXT.encode())
    assert ("1.0.0.127.zen.example", "A") in dns_server.queries
    assert await host.inbox("alice@example.test") == []


@pytest_twisted.ensureDeferred
async def test_swaks_sees_the_dnsbl_refusal_before_data(make_host, dns_server):
    listed(dns_server)
    host = make_host()
    host.config.dnsbl.zones = [ZONE]
    await host.start()
    out = await threads.deferToThread(
        subprocess.run, ["swaks", "--server", "127.0.0.1", "--port", str(host.port),
                         "--from", "x@sender.test", "--to", "alice@example.test",
                         "--helo", "client.sender.test", "--timeout", "20"],
        capture_output=True, text=True, timeout=60)
    assert ("<** 554 5.7.1 Service unavailable; client [127.0.0.1] blocked using "
            f"zen.example; {TEXT}") in out.stdout
    assert " DATA" not in out.stdout  # no body was sent
    assert await host.inbox("alice@example.test") == []


@pytest_twisted.ensureDeferred
async def test_a_code_outside_the_configured_range_does_not_count(make_host, dns_server):
    """127.255.255.254 is what a list answers a blocked resolver: not a listing."""
    listed(dns_server, code="127.255.255.254")
    host = make_host()
    host.config.dnsbl.zones = [ZONE]
    await host.start()
    assert await threads.deferToThread(send, host, "x@sender.test", ["alice@example.test"]) == {}
    assert len(await host.inbox("alice@example.test")) == 1


@pytest_twisted.ensureDeferred
async def test_dnswl_hit_passes_a_client_a_dnsbl_lists(make_host, dns_server):
    listed(dns_server)
    dns_server.zones["1.0.0.127.list.dnswl.example"] = {"A": ["127.0.10.2"]}
    host = make_host()
    host.config.dnsbl.zones = [ZONE]
    host.config.dnsbl.allow_zones = ["list.dnswl.example=127.0.0.0-127.0.255.3"]
    await host.start()
    assert await threads.deferToThread(send, host, "x@sender.test", ["alice@example.test"]) == {}
    assert len(await host.inbox("alice@example.test")) == 1


@pytest_twisted.ensureDeferred
async def test_dnsbl_timeout_never_rejects(make_host, dns_server):
    dns_server.faults["1.0.0.127.zen.example"] = "timeout"
    host = make_host()
    host.config.dnsbl.zones = [ZONE]
    host.config.dns.timeout = 0.5
    await host.start()
    assert await threads.deferToThread(send, host, "x@sender.test", ["alice@example.test"]) == {}
    assert len(await host.inbox("alice@example.test")) == 1


@pytest_twisted.ensureDeferred
async def test_authenticated_submission_is_exempt(make_host, dns_server):
    listed(dns_server)
    host = make_host()
    host.config.dnsbl.zones = [ZONE]
    await host.start()
    await threads.deferToThread(send, host, "alice@example.test", ["bob@example.test"],
                                login=("alice@example.test", "alice-pw"), submission=True)
    await threads.deferToThread(send, host, "alice@example.test", ["bob@example.test"],
                                login=("alice@example.test", "alice-pw"))  # port 25 + AUTH
    assert len(await host.inbox("bob@example.test")) == 2
    # Only the port-25 connection asked (at connect, before its AUTH); submission never.
    assert [q for q in dns_server.queries if q == ("1.0.0.127.zen.example", "A")] == [
        ("1.0.0.127.zen.example", "A")]


def _free_port6() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_ipv6_client_is_asked_by_reversed_nibbles(make_host, dns_server):
    nibbles = ".".join("1" + "0" * 31)  # ::1, reversed
    listed(dns_server, ip_name=nibbles, text="v6 listed")
    host = make_host()
    host.config.dnsbl.zones = [ZONE]
    host.ip = "::1"
    host.port = _free_port6()
    host.config.smtp.listen = [f"tcp6:{host.port}:interface=\\:\\:1"]
    host.config.submission.listen = []
    await host.start()
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        await threads.deferToThread(send, host, "x@sender.test", ["alice@example.test"],
                                    source="::1")
    code, text = e.value.recipients["alice@example.test"]
    assert code == 554
    assert text == b"5.7.1 Service unavailable; client [::1] blocked using zen.example; v6 listed"
    assert (f"{nibbles}.zen.example", "A") in dns_server.queries
    assert len(nibbles.split(".")) == 32


@pytest_twisted.ensureDeferred
async def test_a_lists_txt_cannot_inject_reply_lines(make_host, dns_server):
    """A hostile list (or a forged DNS answer) puts CR LF and a fake reply in its TXT:
    the refusal stays one line of printable ASCII, bounded."""
    listed(dns_server, text=b"bad\r\n250 2.0.0 Ok\r\n\x00\xff" + b"x" * 400)
    host = make_host()
    host.config.dnsbl.zones = [ZONE]
    await host.start()
    line = await threads.deferToThread(_rcpt_reply, host.port)
    assert line.startswith(b"554 5.7.1 Service unavailable; client [127.0.0.1] blocked "
                           b"using zen.example; bad 250 2.0.0 Ok xxx")
    assert line.endswith(b"\r\n") and b"\r" not in line[:-2] and b"\n" not in line[:-2]
    assert len(line) < 320


def _rcpt_reply(port: int) -> bytes:
    """The raw reply line to one RCPT (a raw socket: smtplib would join lines)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO c.test\r\n")
        while not f.readline().startswith(b"250 "):  # the EHLO lines
            pass
        s.sendall(b"MAIL FROM:<x@sender.test>\r\n")
        assert f.readline().startswith(b"250 ")
        s.sendall(b"RCPT TO:<alice@example.test>\r\n")
        line = f.readline()
        s.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"221 ")
        return line
