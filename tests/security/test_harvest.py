"""Directory harvest: error limits, growing delays and bounded log lines (issue 17, item 5).

Before the fix one session of 10,000 ``RCPT TO`` for unknown users got 10,000
``550 5.1.1`` in 0.24 s, and its transaction log line was 357 KB. Now every 4xx/5xx
reply counts as an error until a message is delivered (Postfix's
``smtpd_hard_error_limit``): from ``smtp.soft_error_limit`` on each error reply waits
``error_sleep_time`` times the errors over the limit, and after
``smtp.hard_error_limit`` errors the session ends with ``421 4.7.0``. A transaction's
log line names at most 50 recipients and counts the rest.
"""

from __future__ import annotations

import time

import pytest

from tests.mailhost_process import MailHostProcess
from tests.security.wire import Wire


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = MailHostProcess(str(tmp_path_factory.mktemp("harvest")), extra={
        "smtp": {"hard_error_limit": 20, "soft_error_limit": 10, "error_sleep_time": 0.05},
    })
    h.start()
    yield h
    h.kill()


def test_harvest_is_cut_after_the_hard_error_limit_with_growing_delays(host):
    with Wire(host.ports["smtp"], timeout=30) as w:
        w.line()
        w.send(b"EHLO harvester.example\r\nMAIL FROM:<h@remote.test>\r\n")
        w.smtp_reply()
        w.smtp_reply()
        start = time.monotonic()
        w.send(b"".join(b"RCPT TO:<nobody%d@example.test>\r\n" % i for i in range(10000)))
        stamps, replies = [], []
        while True:
            line = w.line()
            if not line:
                break
            replies.append(line)
            stamps.append(time.monotonic() - start)
    rejected = [r for r in replies if r.startswith(b"550 5.1.1")]
    assert len(rejected) == 20, (len(rejected), replies[-3:])
    assert replies[-1].startswith(b"421 4.7.0") and b"too many errors" in replies[-1]
    # Errors 10..20 wait 0.05, 0.10, ... 0.55 s: 3.3 s in all, growing.
    assert stamps[-1] > 3.0
    first_gap = stamps[10] - stamps[9]
    last_gap = stamps[19] - stamps[18]
    assert last_gap > first_gap + 0.3, (first_gap, last_gap)


def test_a_delivered_message_resets_the_error_count(host):
    with Wire(host.ports["smtp"], timeout=30) as w:
        w.line()
        w.send(b"EHLO client.example\r\nMAIL FROM:<s@remote.test>\r\n")
        w.smtp_reply()
        w.smtp_reply()
        for i in range(15):
            w.send(b"RCPT TO:<typo%d@example.test>\r\n" % i)
            assert w.smtp_reply()[-1].startswith(b"550")
        w.send(b"RCPT TO:<alice@example.test>\r\nDATA\r\n")
        assert w.smtp_reply()[-1].startswith(b"250")
        assert w.smtp_reply()[-1].startswith(b"354")
        w.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n")
        assert w.smtp_reply()[-1].startswith(b"250")
        # 15 errors before the delivery; 15 more after it are still allowed.
        w.send(b"MAIL FROM:<s@remote.test>\r\n")
        w.smtp_reply()
        for i in range(15):
            w.send(b"RCPT TO:<again%d@example.test>\r\n" % i)
            assert w.smtp_reply()[-1].startswith(b"550")


def test_transaction_log_line_is_bounded(host):
    """1,000 accepted recipients (the per-message maximum) make one log line of a few
    KB that counts them, not a 30 KB list."""
    with Wire(host.ports["smtp"], timeout=30) as w:
        w.line()
        w.send(b"EHLO client.example\r\nMAIL FROM:<bulk@remote.test>\r\n")
        w.smtp_reply()
        w.smtp_reply()
        w.send(b"RCPT TO:<alice@example.test>\r\n" * 1000 + b"RSET\r\n")
        for _ in range(1001):
            w.smtp_reply()
        w.send(b"QUIT\r\n")
        w.read_to_close()
    time.sleep(0.5)
    lines = [ln for ln in host.log().splitlines() if "from=<bulk@remote.test>" in ln]
    assert lines, host.log()[-2000:]
    assert "rcpt_count=1000" in lines[-1]
    assert len(lines[-1]) < 6000, len(lines[-1])
