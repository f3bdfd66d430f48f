"""DSN structure, parsed back with the stdlib email package (RFC 3464)."""

from __future__ import annotations

import email
import email.policy

import pytest_twisted

from mailhost.outbound import dsn

ORIGINAL = (
    b"Received: from a by b\r\n"
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@remote.example\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <m1@example.test>\r\n"
    b"\r\n"
    b"Body line\r\n.dot line\r\n"
)


async def build(tmp_path, ret=None, reports=None, envid="ENV1"):
    path = tmp_path / "orig"
    path.write_bytes(ORIGINAL)
    out = bytearray()
    reports = reports or [
        dsn.RecipientReport(
            "bob@remote.example", dsn.FAILED, "5.1.1", orcpt="rfc822;Bob+2Bx@remote.example",
            remote_mta="mx.remote.example", diagnostic="550 5.1.1 no such user",
            last_attempt=1_700_000_100.0),
        dsn.RecipientReport("carol@remote.example", dsn.DELAYED, "4.4.1",
                            diagnostic="451 4.4.1 try later", last_attempt=1_700_000_100.0,
                            will_retry_until=1_700_400_000.0),
    ]
    await dsn.write_dsn(out.extend, hostname="a.test", sender="alice@example.test",
                        reports=reports, arrival=1_700_000_000.0, envid=envid, ret=ret,
                        original_path=str(path), now=1_700_000_200.0)
    return bytes(out)


@pytest_twisted.ensureDeferred
async def test_dsn_is_a_multipart_report_with_delivery_status(tmp_path):
    raw = await build(tmp_path)
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "<alice@example.test>" or "alice@example.test" in msg["To"]
    assert msg["Auto-Submitted"] == "auto-replied"
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    human = parts[0].get_content()
    assert "bob@remote.example" in human and "no such user" in human

    status = parts[1].get_payload()  # list of header blocks: per-message, then per-recipient
    per_msg, bob, carol = status
    assert per_msg["Reporting-MTA"] == "dns; a.test"
    assert per_msg["Original-Envelope-Id"] == "ENV1"
    assert "2023" in per_msg["Arrival-Date"]
    assert bob["Final-Recipient"] == "rfc822; bob@remote.example"
    assert bob["Original-Recipient"] == "rfc822; Bob+x@remote.example"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx.remote.example"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert bob["Last-Attempt-Date"]
    assert carol["Action"] == "delayed" and carol["Status"] == "4.4.1"
    assert carol["Will-Retry-Until"]

    headers = parts[2].get_content()
    assert "Subject: hello" in headers and "Body line" not in headers
    assert raw.rstrip().endswith(b"--")  # the closing delimiter is there


@pytest_twisted.ensureDeferred
async def test_ret_full_returns_the_whole_message(tmp_path):
    raw = await build(tmp_path, ret="FULL", envid=None)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    parts = msg.get_payload()
    assert parts[2].get_content_type() == "message/rfc822"
    inner = parts[2].get_payload()[0]
    assert inner["Subject"] == "hello"
    assert ".dot line" in inner.get_content()
    assert "Original-Envelope-Id" not in str(parts[1])


def test_enhanced_status():
    assert dsn.enhanced_status("550 5.1.1 no", True) == "5.1.1"
    assert dsn.enhanced_status("550 no such user", True) == "5.0.0"
    assert dsn.enhanced_status("421 4.3.2 busy", False) == "4.3.2"
    assert dsn.enhanced_status("connection refused", False) == "4.0.0"
