"""Live updates over server-sent events: a message stored during the test is announced
on an open ``/api/events`` stream, and deletes made through the API too."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.web.helpers import message, request, send


def _events(response, wanted: str, limit: int = 50) -> dict:
    """The data of the next ``wanted`` event (bounded in lines; the socket has a timeout)."""
    event = None
    for _ in range(limit):
        line = response.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: ") and event == wanted:
            return json.loads(line[len("data: "):])
    raise AssertionError(f"no {wanted} event")


@pytest.mark.mailhost(web=True, users={"alice@example.test": "pw"})
def test_a_stored_message_is_announced_on_the_event_stream(mailhost_sync):
    stream = urllib.request.urlopen(mailhost_sync.web_url + "/api/events", timeout=10)
    try:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.readline().startswith(b"retry:")
        send(mailhost_sync.smtp_port, message("live one"))
        summary = _events(stream, "message")
        assert summary["subject"] == "live one"
        assert summary["mailbox"] == "alice@example.test"
        deleted = request(mailhost_sync.web_url + f"/api/messages/{summary['id']}", "DELETE")
        assert deleted.json() == {"deleted": 1}
        assert _events(stream, "deleted") == {"ids": [summary["id"]]}
    finally:
        stream.close()


@pytest.mark.mailhost(web=True)
def test_stopping_the_host_ends_open_streams(mailhost_sync):
    stream = urllib.request.urlopen(mailhost_sync.web_url + "/api/events", timeout=10)
    stream.readline()
    from mailhost.testing.threaded import call

    call(mailhost_sync._host.stop)
    assert stream.read() in (b"", b": open\n\n")  # ended, not hanging until the timeout
    stream.close()


@pytest.mark.mailhost(web=True, capture=True)
def test_capture_mode_shows_mail_for_any_domain(mailhost_sync):
    stream = urllib.request.urlopen(mailhost_sync.web_url + "/api/events", timeout=10)
    try:
        send(mailhost_sync.smtp_port, message("order shipped", to="customer@gmail.com"))
        assert _events(stream, "message")["mailbox"] == "customer@gmail.com"
    finally:
        stream.close()
    base = mailhost_sync.web_url
    assert request(base + "/api/messages?domain=gmail.com").json()["total"] == 1
    assert "customer@gmail.com" in request(base + "/api/mailboxes").json()["mailboxes"]
    assert request(base + "/api/queue").json() == {"messages": []}  # nothing relayed
