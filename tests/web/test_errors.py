"""Malformed requests get 4xx JSON errors, never a traceback; ids that try to walk
out of the mail view (``..``, ``/`` as ``%2F``, NUL) are refused before it sees them."""

from __future__ import annotations

import http.client

import pytest

from tests.web.helpers import message, request, send

MALFORMED = [
    ("GET", "/api/nothing", None, 404),
    ("GET", "/api", None, 404),
    ("PUT", "/api/messages", None, 405),
    ("POST", "/api/mailboxes", None, 405),
    ("GET", "/api/messages?limit=0", None, 400),
    ("GET", "/api/messages?limit=abc", None, 400),
    ("GET", "/api/messages?offset=-1", None, 400),
    ("GET", "/api/messages?before=2026-13-45", None, 400),
    ("GET", "/api/messages?subject=%ff", None, 400),
    ("GET", "/api/messages/%ff", None, 400),
    ("GET", "/api/messages/x/attachments/99999999", None, 400),
    ("POST", "/api/faults", b"{not json", 400),
    ("POST", "/api/faults", b"[1, 2]", 400),
    ("POST", "/api/faults", b'{"protocol": "smtp", "action": "fail", "command": "MAIL", '
                            b'"code": "451"}', 400),
    ("POST", "/api/faults", b'{"protocol": "smtp", "action": "fail", "command": "MAIL", '
                            b'"extra": 1}', 400),
    ("POST", "/api/faults", b'{"protocol": "smtp", "action": "explode", "command": "MAIL"}', 400),
    ("POST", "/api/faults", b'{"protocol": "smtp", "action": "fail", "command": "MAIL\\r\\nX"}',
     400),
    ("POST", "/api/faults", b'{"protocol": "smtp", "action": "fail", "command": "MAIL", '
                            b'"times": 0}', 400),
    ("POST", "/api/faults", b'{"protocol": "smtp", "action": "fail", "command": "MAIL", '
                            b'"message": "a\\r\\n250 ok"}', 400),
    ("POST", "/api/messages/x/release", b'{"host": "a b", "port": 25}', 400),
    ("POST", "/api/messages/x/release", b'{"host": "h", "port": true}', 400),
    ("POST", "/api/messages/x/release", b'{"host": "h", "port": 25, "recipients": []}', 400),
    ("POST", "/api/messages/x/release", b'{"host": "h", "port": 25, "recipients": ["a>b@c"]}',
     400),
    ("POST", "/api/messages/x/release", b'{"host": "h", "port": 25, "sender": 7}', 400),
    ("POST", "/api/messages/x/release", b'{"host": "h:25:x", "port": 25}', 400),
    ("GET", "/index.html/x", None, 404),
    ("POST", "/", None, 405),
]

TRAVERSAL = [
    "/api/messages/../raw",
    "/api/messages/%2e%2e/raw",
    "/api/messages/..%2F..%2Fetc%2Fpasswd/raw",
    "/api/messages/%2Fetc%2Fpasswd",
    "/api/messages/a%00b/raw",
    "/api/messages/a%5Cb",
    "/api/messages/.hidden/attachments/0",
    "/api/messages/x..y/html",
]


def _raw_request(port: int, method: str, path: str, body: bytes | None) -> tuple[int, str, bytes]:
    """A request sent as written (urllib would normalise ``..`` and ``%2e``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.getheader("content-type") or "", r.read()
    finally:
        conn.close()


def _is_json_error(ctype: str, body: bytes, status: int) -> None:
    import json

    assert ctype == "application/json", body
    assert b"Traceback" not in body and b"File \"" not in body
    doc = json.loads(body)
    assert doc["status"] == status and doc["error"]


@pytest.mark.mailhost(web=True, users={"alice@example.test": "pw"})
def test_malformed_requests_get_4xx_json_errors(mailhost_sync):
    for method, path, body, status in MALFORMED:
        got, ctype, data = _raw_request(mailhost_sync.web_port, method, path, body)
        assert got == status, (method, path, got, data)
        _is_json_error(ctype, data, status)


@pytest.mark.mailhost(web=True, users={"alice@example.test": "pw"})
def test_path_traversal_in_message_ids_is_rejected(mailhost_sync):
    send(mailhost_sync.smtp_port, message("secret"))
    mailhost_sync.wait_for_messages(1)
    for path in TRAVERSAL:
        status, ctype, data = _raw_request(mailhost_sync.web_port, "GET", path, None)
        assert status in (400, 404), (path, status, data)
        _is_json_error(ctype, data, status)
        assert b"secret" not in data and b"root:" not in data
    for path in ("/static/../../setup.cfg", "/static/%2e%2e/%2e%2e/setup.cfg",
                 "/static/..%2F..%2Fsetup.cfg", "/../../../etc/passwd"):
        status, ctype, data = _raw_request(mailhost_sync.web_port, "GET", path, None)
        assert status == 404, (path, status)
        assert b"[metadata]" not in data and b"root:" not in data


@pytest.mark.mailhost(web=True, users={"alice@example.test": "pw"})
def test_a_message_that_breaks_mime_parsing_still_shows(mailhost_sync):
    """Broken MIME (bad boundary, unknown charset, undecodable header) is shown, not a 500."""
    raw = (b"From: =?x-unknown?B?????=\r\nTo: alice@example.test\r\nSubject: broken\r\n"
           b"Content-Type: multipart/mixed; boundary=\"zz\"\r\n\r\n--zz\r\n"
           b"Content-Type: text/plain; charset=x-nonexistent\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n!!!notbase64\r\n--zz\r\n"
           b"Content-Type: application/pdf; name*=bogus''%ZZ\r\n\r\n%PDF\r\n")  # no end boundary
    mailhost_sync.deliver("alice@example.test", raw)
    listed = request(mailhost_sync.web_url + "/api/messages").json()["messages"]
    got = request(mailhost_sync.web_url + f"/api/messages/{listed[0]['id']}")
    assert got.status == 200, got.body
    assert got.json()["summary"]["subject"] == "broken"


@pytest.mark.mailhost(web=True, users={"alice@example.test": "pw"})
def test_a_message_deleted_elsewhere_is_gone_from_every_endpoint(mailhost_sync):
    """The parse cache never serves a message another client deleted."""
    send(mailhost_sync.smtp_port, message("short-lived", html="<p>bye</p>",
                                          attachment=("a.txt", b"A")))
    mailhost_sync.wait_for_messages(1)
    base = mailhost_sync.web_url
    mid = request(base + "/api/messages").json()["messages"][0]["id"]
    assert request(base + f"/api/messages/{mid}/html").status == 200  # parsed and cached
    mailhost_sync.mail_view.delete(mid)
    for path in ("", "/html", "/attachments", "/attachments/0", "/raw"):
        got = request(base + f"/api/messages/{mid}{path}")
        assert got.status == 404, (path, got.body)
