"""Hypothesis-driven hostile sessions against ONE long-running ``twistd mailhost``.

Every session must end in a protocol answer or a clean close (never a hang), the
process must survive all of them, still serve a normal login on every protocol, and
its resident memory must stay bounded. bench/fuzz_soak.py runs the same sessions
10,000+ times; this is the CI-sized run.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.mailhost_process import rss_kib
from tests.security.fuzz_sessions import PASSWORD, USER, Session, run_session, sessions
from tests.security.hosts import HOST, TLSHost

EXAMPLES = {"smtp": 120, "pop3": 120, "imap": 160}
RSS_GROWTH_LIMIT_KIB = 96 * 1024


@pytest.fixture(scope="module")
def fuzz_host(tmp_path_factory):
    host = TLSHost(str(tmp_path_factory.mktemp("fuzz")), plaintext="yes").start()
    with smtplib.SMTP(HOST, host.ports["smtp"], timeout=30) as smtp:
        for i in range(3):
            smtp.sendmail("bob@example.test", [USER],
                          f"Subject: seed {i}\r\n\r\nhello {i}\r\n.dot line\r\n".encode())
    host.rss_start = rss_kib(host.pid)
    yield host
    host.kill()


def check_alive(host: TLSHost) -> None:
    assert host.alive(), host.proc.log()
    with smtplib.SMTP(HOST, host.ports["smtp"], timeout=30) as smtp:
        assert smtp.noop()[0] == 250
    # The last fuzz session's close may still be on its way to the server, which then
    # still holds the maildrop lock ([IN-USE]); give it a few seconds, as a client would.
    for attempt in range(40):
        pop = poplib.POP3(HOST, host.ports["pop3"], timeout=30)
        pop.user(USER)
        try:
            pop.pass_(PASSWORD)
        except poplib.error_proto as e:
            pop.close()
            if b"[IN-USE]" not in e.args[0] or attempt == 39:
                raise
            time.sleep(0.25)
            continue
        pop.quit()
        break
    with imaplib.IMAP4(HOST, host.ports["imap"], timeout=30) as imap:
        imap.login(USER, PASSWORD)
        assert imap.select("INBOX")[0] == "OK"
        imap.logout()


def _fuzz(host: TLSHost, proto: str, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],  # no shrinking: keep CI bounded
              suppress_health_check=list(HealthCheck))
    @given(sessions(protocols=(proto,)))
    def one(session: Session) -> None:
        kind = "smtp" if session.proto == "smtp" else session.proto
        run_session(session, host.ports[kind])

    one()


def test_hostile_sessions_against_one_server(fuzz_host):
    """One test, so that xdist cannot split the protocols over two servers."""
    for proto in ("smtp", "pop3", "imap"):
        _fuzz(fuzz_host, proto, EXAMPLES[proto])
        check_alive(fuzz_host)
    rss = rss_kib(fuzz_host.pid)
    peak = rss_kib(fuzz_host.pid, "VmHWM")
    assert rss - fuzz_host.rss_start < RSS_GROWTH_LIMIT_KIB, (fuzz_host.rss_start, rss, peak)
    log = fuzz_host.log_text()
    for bad in ("Traceback", "Unhandled Error", "Unhandled error"):
        assert bad not in log, log[log.index(bad) - 2000:log.index(bad) + 2000]
