"""Forward-confirmed reverse DNS in ``Received:`` over real SMTP, as Postfix writes
it, and ``smtp.fcrdns = "require"``; a DNS that does not answer delays nothing past
the DNS timeout."""

from __future__ import annotations

import email
import smtplib
import time

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.abuse.conftest import send


@pytest.fixture
def reverse_zones(dns_server):
    dns_server.zones.update({
        "1.0.0.127.in-addr.arpa": {"PTR": ["client.sender.test"]},
        "client.sender.test": {"A": ["127.0.0.1"]},
        # 127.0.0.3 claims a name that does not lead back to it
        "3.0.0.127.in-addr.arpa": {"PTR": ["liar.sender.test"]},
        "liar.sender.test": {"A": ["192.0.2.1"]},
    })
    return dns_server


def received(raw: bytes) -> str:
    return str(email.message_from_bytes(raw)["Received"])


@pytest_twisted.ensureDeferred
async def test_confirmed_name_and_unknown_in_received(make_host, reverse_zones):
    host = make_host()
    host.config.smtp.fcrdns = "record"
    await host.start()
    await threads.deferToThread(send, host, "x@sender.test", ["alice@example.test"])
    await threads.deferToThread(send, host, "x@sender.test", ["alice@example.test"],
                                source="127.0.0.3")
    await threads.deferToThread(send, host, "x@sender.test", ["alice@example.test"],
                                source="127.0.0.4")  # no PTR at all
    first, second, third = await host.inbox("alice@example.test")
    assert received(first).startswith(
        "from client.sender.test (client.sender.test [127.0.0.1])")
    assert received(second).startswith("from client.sender.test (unknown [127.0.0.3])")
    assert received(third).startswith("from client.sender.test (unknown [127.0.0.4])")


@pytest_twisted.ensureDeferred
async def test_require_refuses_an_unconfirmed_client_at_rcpt(make_host, reverse_zones):
    host = make_host()
    host.config.smtp.fcrdns = "require"
    await host.start()
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        await threads.deferToThread(send, host, "x@sender.test", ["alice@example.test"],
                                    source="127.0.0.3")
    assert e.value.recipients["alice@example.test"] == (
        550, b"5.7.25 Client host rejected: cannot find your hostname, [127.0.0.3]")
    assert await threads.deferToThread(send, host, "x@sender.test",
                                       ["alice@example.test"]) == {}


@pytest_twisted.ensureDeferred
async def test_a_silent_dns_costs_at_most_the_dns_timeout(make_host, dns_server):
    dns_server.faults["1.0.0.127.in-addr.arpa"] = "timeout"
    host = make_host()
    host.config.smtp.fcrdns = "require"
    host.config.dns.timeout = 1.0
    await host.start()
    started = time.monotonic()
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        await threads.deferToThread(send, host, "x@sender.test", ["alice@example.test"])
    assert time.monotonic() - started < 5
    assert e.value.recipients["alice@example.test"][0] == 450  # temporary, never 5xx
    host.config.smtp.fcrdns = "record"
    await host.stop()
    await host.start()
    await threads.deferToThread(send, host, "x@sender.test", ["alice@example.test"])
    (got,) = await host.inbox("alice@example.test")
    assert "(unknown [127.0.0.1])" in received(got)


@pytest_twisted.ensureDeferred
async def test_iprev_result_in_authentication_results(make_host, reverse_zones):
    host = make_host()
    host.config.smtp.fcrdns = "record"
    host.config.pipeline.stages = ["spf", "auth_results"]
    await host.start()
    await threads.deferToThread(send, host, "x@sender.test", ["alice@example.test"])
    await threads.deferToThread(send, host, "x@sender.test", ["alice@example.test"],
                                source="127.0.0.3")
    first, second = await host.inbox("alice@example.test")
    ar = " ".join(str(email.message_from_bytes(first)["Authentication-Results"]).split())
    assert ar.startswith("mx.example.test; iprev=pass policy.iprev=127.0.0.1 "
                         "(client.sender.test); spf=none")
    ar = " ".join(str(email.message_from_bytes(second)["Authentication-Results"]).split())
    assert "iprev=fail policy.iprev=127.0.0.3;" in ar
