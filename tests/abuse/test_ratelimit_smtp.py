"""Per-user outbound limits over real SMTP: 450 4.7.1 at MAIL FROM past the hourly
limit (counted across connections and listeners), 452 4.5.3 at the RCPT past the
recipient limit, and per-user overrides from the passwd file."""

from __future__ import annotations

import os
import smtplib

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.abuse.conftest import send

ALICE = ("alice@example.test", "alice-pw")
BOB = ("bob@example.test", "bob-pw")


def submit(host, login, rcpts=("bob@example.test",), submission=True) -> dict:
    return send(host, login[0], list(rcpts), login=login, submission=submission)


@pytest_twisted.ensureDeferred
async def test_submission_user_over_the_hourly_limit_gets_450_4_7_1(make_host):
    host = make_host()
    host.config.ratelimit.messages_per_hour = 3
    await host.start()
    for _ in range(2):
        await threads.deferToThread(submit, host, ALICE)
    await threads.deferToThread(submit, host, ALICE, submission=False)  # port 25 + AUTH
    for submission in (True, False):
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            await threads.deferToThread(submit, host, ALICE, submission=submission)
        assert e.value.smtp_code == 450
        assert e.value.smtp_error.startswith(b"4.7.1 Error: too many messages: limit is 3 per hour")
    # Another user has a bucket of their own; unauthenticated mail is not limited.
    await threads.deferToThread(submit, host, BOB, rcpts=["alice@example.test"])
    for _ in range(4):
        await threads.deferToThread(send, host, "x@sender.test", ["bob@example.test"])
    assert len(await host.inbox("bob@example.test")) == 3 + 4


@pytest_twisted.ensureDeferred
async def test_recipient_past_the_per_message_limit_gets_452_4_5_3(make_host):
    host = make_host()
    host.config.ratelimit.recipients_per_message = 2
    await host.start()
    rcpts = ["bob@example.test", "alice@example.test", "postmaster@example.test"]
    refused = await threads.deferToThread(submit, host, ALICE, rcpts=rcpts)
    assert list(refused) == ["postmaster@example.test"]
    code, text = refused["postmaster@example.test"]
    assert (code, text) == (452, b"4.5.3 Error: too many recipients: limit is 2 per message")
    assert len(await host.inbox("bob@example.test")) == 1


@pytest_twisted.ensureDeferred
async def test_passwd_fields_override_the_defaults_per_user(make_host):
    host = make_host()
    host.config.ratelimit.messages_per_hour = 5
    with open(os.path.join(host.config.server.data_dir, "passwd"), "w") as f:
        # (logins use the test directory; the limits are read from the passwd file)
        f.write("alice@example.test:$argon2id$unused:messages_per_hour=1:"
                "recipients_per_message=1\n"
                "bob@example.test:$argon2id$unused:messages_per_hour=0\n")
    await host.start()
    refused = await threads.deferToThread(submit, host, ALICE,
                                          rcpts=["bob@example.test", "alice@example.test"])
    assert refused["alice@example.test"][0] == 452
    with pytest.raises(smtplib.SMTPSenderRefused) as e:
        await threads.deferToThread(submit, host, ALICE)
    assert e.value.smtp_code == 450 and b"limit is 1 per hour" in e.value.smtp_error
    for _ in range(7):  # 0: no limit for bob, whatever the default
        await threads.deferToThread(submit, host, BOB, rcpts=["alice@example.test"])
