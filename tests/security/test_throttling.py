"""Brute-force throttling across protocols, and logs that never hold a password.

The host allows 3 failures per client address; failures on IMAP and POP3 count for
SMTP from the same address. Once locked, even the right password gets a temporary
refusal, while another client address (127.0.0.2) is unaffected. The twistd log
must name the client address of the refusals and must contain neither password.
"""

from __future__ import annotations

import base64
import time

import pytest

from tests.security.hosts import PASSWORD, USER, TLSHost
from tests.security.wire import Wire

WRONG = "Wr0ng-S3cret-Zq9"
ATTACKER = "127.0.0.3"
BYSTANDER = "127.0.0.2"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = TLSHost(str(tmp_path_factory.mktemp("throttle")), plaintext="yes",
                extra={"auth": {"max_failures": 3, "failure_window": 60.0,
                                "lockout": 60.0}})
    h.start()
    yield h
    h.kill()


def imap_login(host, password: str, source: str) -> bytes:
    with Wire(host.ports["imap"], source=source, timeout=30) as w:
        w.line()
        w.send(b'a LOGIN "' + USER.encode() + b'" "' + password.encode() + b'"\r\n')
        return w.tagged(b"a")[-1]


def pop3_login(host, password: str, source: str) -> bytes:
    with Wire(host.ports["pop3"], source=source, timeout=30) as w:
        w.line()
        w.send(b"USER " + USER.encode() + b"\r\n")
        w.line()
        w.send(b"PASS " + password.encode() + b"\r\n")
        reply = w.line()
        w.send(b"QUIT\r\n")
        return reply


def smtp_login(host, password: str, source: str) -> bytes:
    with Wire(host.ports["submission"], source=source, timeout=30) as w:
        w.line()
        w.send(b"EHLO client.test\r\n")
        w.smtp_reply()
        w.send(b"AUTH PLAIN " + base64.b64encode(f"\0{USER}\0{password}".encode()) + b"\r\n")
        return w.smtp_reply()[-1]


def test_failures_on_one_protocol_lock_out_all(host):
    assert imap_login(host, WRONG, ATTACKER).startswith(b"a NO [AUTHENTICATIONFAILED]")
    assert pop3_login(host, WRONG, ATTACKER).startswith(b"-ERR")
    assert smtp_login(host, WRONG, ATTACKER).startswith(b"535 ")
    # Locked: the right password is now refused with a temporary error everywhere.
    assert smtp_login(host, PASSWORD, ATTACKER).startswith(b"454 4.7.0")
    assert imap_login(host, PASSWORD, ATTACKER).startswith(b"a NO [UNAVAILABLE]")
    assert pop3_login(host, PASSWORD, ATTACKER).startswith(b"-ERR [SYS/TEMP]")
    # Per address: another client is not locked out.
    assert imap_login(host, PASSWORD, BYSTANDER).startswith(b"a OK")
    assert smtp_login(host, PASSWORD, BYSTANDER).startswith(b"235 ")


def test_failed_attempts_are_slowed_down(host):
    """Each failure adds delay before the next answer (1 s, 2 s ...)."""
    source = "127.0.0.4"
    imap_login(host, WRONG, source)
    started = time.monotonic()
    assert imap_login(host, WRONG, source).startswith(b"a NO")
    assert time.monotonic() - started >= 0.9


def test_log_names_the_client_but_never_a_password(host):
    # Its own client address: under xdist this test may run without the others.
    source = "127.0.0.5"
    for _ in range(3):
        assert imap_login(host, WRONG, source).startswith(b"a NO")
    assert imap_login(host, PASSWORD, source).startswith(b"a NO [UNAVAILABLE]")
    deadline = time.monotonic() + 5
    while True:
        log = host.log_text()
        refusals = [line for line in log.splitlines()
                    if "throttled" in line and f"client={source}" in line]
        if refusals or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert refusals, "no throttling refusal naming the client in the log"
    for secret in (WRONG, PASSWORD, base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),
                   base64.b64encode(f"\0{USER}\0{WRONG}".encode()).decode()):
        assert secret not in log, f"secret {secret!r} leaked into the log"


def test_concurrent_attempts_do_not_bypass_the_failure_limit(host):
    """max_failures is 3: twelve wrong logins sent at once from one address must not
    all reach the password check. Failures are only counted once a check has
    finished (about 1 s of argon2 each), so parallel attempts all pass ``locked()``."""
    from concurrent.futures import ThreadPoolExecutor

    source = "127.0.0.6"
    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(lambda _: imap_login(host, WRONG, source), range(12)))
    checked = [r for r in replies if b"AUTHENTICATIONFAILED" in r]
    assert all(r.startswith(b"a NO") for r in replies), replies
    assert len(checked) <= 3, f"{len(checked)} of 12 parallel guesses were checked"
