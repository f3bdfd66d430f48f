"""Greylisting over real SMTP: 451 4.7.1 first, a retry after the window passes, the
/24 counts as one client, allowlists and DNSWL exempt, and the state survives a
restart of the host."""

from __future__ import annotations

import smtplib
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads

from tests.abuse.conftest import send

DELAY = 1.0


def greylisting(host) -> None:
    host.config.greylist.enabled = True
    host.config.greylist.delay = DELAY


async def refused(host, sender: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        await threads.deferToThread(send, host, sender, ["alice@example.test"], source=source)
    return e.value.recipients["alice@example.test"]


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds)


@pytest_twisted.ensureDeferred
async def test_first_try_451_4_7_1_and_a_retry_after_the_window_passes(make_host):
    host = make_host()
    greylisting(host)
    await host.start()
    code, text = await refused(host, "news@sender.test")
    assert code == 451
    assert text.startswith(b"4.7.1 <alice@example.test>: Recipient address rejected: "
                           b"Greylisted, please try again in ")
    code, _ = await refused(host, "news@sender.test")  # too early: still deferred
    assert code == 451
    await sleep(DELAY + 0.2)
    assert await threads.deferToThread(send, host, "news@sender.test",
                                       ["alice@example.test"]) == {}
    # From another address of the same /24: the same client for greylisting.
    assert await threads.deferToThread(send, host, "news@sender.test", ["alice@example.test"],
                                       source="127.0.0.3") == {}
    assert len(await host.inbox("alice@example.test")) == 2
    # Another sender is a new triplet.
    assert (await refused(host, "other@sender.test"))[0] == 451


@pytest_twisted.ensureDeferred
async def test_greylist_state_survives_a_restart(make_host):
    host = make_host()
    greylisting(host)
    host.config.greylist.delay = 3600.0
    await host.start()
    assert (await refused(host, "early@sender.test"))[0] == 451
    await host.stop()
    # A long delay, so only the stored first-seen time can make the retry pass: the
    # database is edited as a clock an hour later would find it.
    import sqlite3

    db = sqlite3.connect(host.config.data_path(host.config.greylist.path))
    with db:
        (count,) = db.execute("SELECT COUNT(*) FROM triplets").fetchone()
        db.execute("UPDATE triplets SET first = first - 3601, last = last - 3601")
    db.close()
    assert count == 1
    await host.start()
    started = time.monotonic()
    assert await threads.deferToThread(send, host, "early@sender.test",
                                       ["alice@example.test"]) == {}
    assert time.monotonic() - started < 10
    await host.stop()
    await host.start()  # and once passed, it stays passed
    assert await threads.deferToThread(send, host, "early@sender.test",
                                       ["alice@example.test"]) == {}
    assert (await refused(host, "new@sender.test"))[0] == 451


@pytest_twisted.ensureDeferred
async def test_retry_after_restart_within_the_window_is_still_deferred(make_host):
    """The first-seen time is what survives: a restart neither forgets the triplet
    (so the retry after the window passes) nor restarts its window."""
    host = make_host()
    greylisting(host)
    await host.start()
    assert (await refused(host, "r@sender.test"))[0] == 451
    await host.stop()
    await host.start()
    await sleep(DELAY + 0.2)
    assert await threads.deferToThread(send, host, "r@sender.test",
                                       ["alice@example.test"]) == {}


@pytest_twisted.ensureDeferred
async def test_allowlisted_client_and_dnswl_client_are_not_greylisted(make_host, dns_server):
    dns_server.zones["4.1.0.127.list.dnswl.example"] = {"A": ["127.0.5.1"]}
    host = make_host()
    greylisting(host)
    host.config.greylist.allow_clients = ["127.0.0.3/32"]
    host.config.dnsbl.allow_zones = ["list.dnswl.example"]
    await host.start()
    assert await threads.deferToThread(send, host, "a@sender.test", ["alice@example.test"],
                                       source="127.0.0.3") == {}
    assert await threads.deferToThread(send, host, "a@sender.test", ["alice@example.test"],
                                       source="127.0.1.4") == {}
    assert (await refused(host, "a@sender.test", source="127.0.0.1"))[0] == 451


@pytest_twisted.ensureDeferred
async def test_allowlisted_sender_domain_and_authenticated_users_pass(make_host):
    host = make_host()
    greylisting(host)
    host.config.greylist.allow_sender_domains = ["friend.test"]
    await host.start()
    assert await threads.deferToThread(send, host, "x@lists.friend.test",
                                       ["alice@example.test"]) == {}
    assert await threads.deferToThread(
        send, host, "bob@example.test", ["alice@example.test"],
        login=("bob@example.test", "bob-pw")) == {}


def _pipelined(port: int) -> list[bytes]:
    """MAIL, two RCPTs and DATA in one write (RFC 2920), then the body: the reply
    lines in the order they came."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO c.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        s.sendall(b"MAIL FROM:<p@sender.test>\r\nRCPT TO:<alice@example.test>\r\n"
                  b"RCPT TO:<postmaster@example.test>\r\nDATA\r\n")
        replies = [f.readline() for _ in range(4)]
        s.sendall(b"Subject: p\r\n\r\nHello.\r\n.\r\nQUIT\r\n")
        replies += [f.readline(), f.readline()]
        return replies


@pytest_twisted.ensureDeferred
async def test_pipelined_replies_stay_in_order_while_checks_decide(make_host):
    host = make_host()
    greylisting(host)  # postmaster@ is on the default recipient allowlist
    await host.start()
    replies = await threads.deferToThread(_pipelined, host.port)
    assert [r[:3] for r in replies] == [b"250", b"451", b"250", b"354", b"250", b"221"], replies
    assert b"<alice@example.test>" in replies[1]
