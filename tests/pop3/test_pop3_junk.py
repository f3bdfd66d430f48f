"""Junk against the live server: it always answers or closes cleanly, and never dies."""

from __future__ import annotations

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from tests.pop3.pop3_clients import RawClient

words = st.sampled_from([
    b"USER", b"PASS", b"AUTH", b"AUTH PLAIN", b"CAPA", b"STAT", b"LIST", b"UIDL", b"TOP",
    b"RETR", b"DELE", b"RSET", b"NOOP", b"STLS", b"APOP", b"0", b"1", b"-1", b"*", b"=",
    b"alice@example.test", b"secret", b" ", b"\r\n", b"\n", b"\r", b"\x00", b"\xff", b".",
])
junk = st.lists(st.one_of(words, st.binary(max_size=40), st.just(b"A" * 1500)),
                max_size=25).map(b"".join)


@pytest_twisted.ensureDeferred
async def test_junk_never_hangs_or_breaks_the_server(pop3):
    host = await pop3()
    await host.deliver(b"Subject: x\r\n\r\nbody\r\n")
    failures: list[dict] = []

    def observe(event: dict) -> None:
        if "log_failure" in event:
            failures.append(event)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(junk, st.booleans())
    def fuzz(data: bytes, log_in: bool) -> None:
        c = RawClient(host.port, timeout=5)
        assert c.greeting.startswith(b"+OK")
        if log_in:
            c.cmd(b"USER alice@example.test")
            assert c.cmd(b"PASS secret").startswith(b"+OK")
        # '*' ends a SASL exchange the junk may have opened; QUIT ends the session.
        c.send(data + b"\r\n*\r\nQUIT\r\n")
        try:
            while c.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except TimeoutError as e:
            raise AssertionError(f"server neither answered QUIT nor closed; sent {data!r}") from e
        finally:
            c.close()

    globalLogPublisher.addObserver(observe)
    try:
        await deferToThread(fuzz)
    finally:
        globalLogPublisher.removeObserver(observe)

    def still_serving():
        c = RawClient(host.port)
        c.cmd(b"USER alice@example.test")
        return c.cmd(b"PASS secret"), c.cmd(b"STAT")

    login, stat = await deferToThread(still_serving)
    assert login.startswith(b"+OK") and stat.startswith(b"+OK ")
    assert not failures, failures[0]
