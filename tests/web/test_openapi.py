"""The REST API against its OpenAPI description: every path, method and described
status is called on a real test host (mail sent over SMTP, a second host to release
to), and every answer validated against the description."""

from __future__ import annotations

import pytest

from tests.web.helpers import message, request, send
from tests.web.openapi_check import OpenAPIChecker

USERS = {"alice@example.test": "pw", "carol@example.test": "pw"}

# Statuses the description declares that no request of a healthy test host can
# provoke: faults switched off (403, see test_access.py), a body too large for a
# JSON decoder to matter (413 is not described), and a server that accepts the
# connection but never answers (504 is not described).
UNREACHABLE = {"POST /api/faults 403", "DELETE /api/faults 403"}


@pytest.mark.mailhost(web=True, users=USERS)
def test_every_path_answers_as_the_openapi_description_says(mailhost_sync):
    from mailhost.testing import running

    base = mailhost_sync.web_url
    doc = request(base + "/api/openapi.json").json()
    api = OpenAPIChecker(doc)

    def call(method, path, **kwargs):
        return api.check(method, base + path, request(base + path, method, **kwargs))

    assert call("GET", "/api/openapi.json").json()["openapi"].startswith("3.")
    send(mailhost_sync.smtp_port, message("first", "one\n", attachment=("a.txt", b"AAA")))
    send(mailhost_sync.smtp_port, message("second", "two\n", html="<p>two</p>",
                                          to="carol@example.test"))
    mailhost_sync.wait_for_messages(2)

    assert call("GET", "/api/mailboxes").json()["mailboxes"] == sorted(USERS)
    listed = call("GET", "/api/messages?limit=1&offset=0").json()
    assert listed["total"] == 2 and len(listed["messages"]) == 1
    assert listed["messages"][0]["subject"] == "second"  # newest first
    found = call("GET", "/api/messages?subject=FIRST&recipient=alice&body=one"
                        "&since=2000-01-01T00:00:00Z&before=2100-01-01").json()
    assert [m["subject"] for m in found["messages"]] == ["first"]
    call("GET", "/api/messages?since=yesterday")  # 400
    first = found["messages"][0]["id"]
    second = call("GET", "/api/messages?mailbox=carol@example.test").json()["messages"][0]["id"]

    one = call("GET", f"/api/messages/{first}").json()
    assert one["summary"]["subject"] == "first" and one["text"] == "one\n"
    assert [a["filename"] for a in one["attachments"]] == ["a.txt"]
    call("GET", "/api/messages/bm8gc3VjaA")  # a well-formed id of nothing: 404
    call("GET", "/api/messages/..")  # 400
    raw = call("GET", f"/api/messages/{first}/raw")
    assert b"Subject: first\r\n" in raw.body
    assert call("GET", f"/api/messages/{first}/raw?download=1").headers[
        "content-disposition"].startswith("attachment")
    call("GET", "/api/messages/bm8gc3VjaA/raw")
    call("GET", "/api/messages/.x/raw")
    html = call("GET", f"/api/messages/{second}/html")
    assert html.body == b"<p>two</p>\n"
    assert "sandbox" in html.headers["content-security-policy"]
    call("GET", f"/api/messages/{first}/html")  # no HTML body: 404
    call("GET", "/api/messages/a%2Fb/html")
    assert call("GET", f"/api/messages/{first}/attachments").json()["attachments"][0]["size"] == 3
    call("GET", "/api/messages/bm8gc3VjaA/attachments")
    call("GET", "/api/messages/%00/attachments")
    assert call("GET", f"/api/messages/{first}/attachments/0").body == b"AAA"
    call("GET", f"/api/messages/{first}/attachments/1")  # 404
    call("GET", f"/api/messages/{first}/attachments/-1")  # 400

    # Release to a second host, byte for byte (after its Return-Path and Received).
    with running(users={"dave@example.test": "pw"}) as other:
        released = call("POST", f"/api/messages/{first}/release",
                        body={"host": "127.0.0.1", "port": other.smtp_port,
                              "recipients": ["dave@example.test"]})
        assert released.json() == {"released": f"127.0.0.1:{other.smtp_port}"}
        got = other.wait_for_messages(1)[0]
        assert got.raw.endswith(raw.body.split(b"\r\n\r\n", 1)[1])
    call("POST", f"/api/messages/{first}/release", body={"host": "127.0.0.1", "port": 9})  # 502
    call("POST", f"/api/messages/{first}/release", raw_body=b"host=x",
         headers={"Content-Type": "application/x-www-form-urlencoded"})  # 415
    call("POST", f"/api/messages/{first}/release", body={"host": "127.0.0.1", "port": 0})
    call("POST", "/api/messages/bm8gc3VjaA/release", body={"host": "127.0.0.1", "port": 25})

    assert call("GET", "/api/queue").json() == {"messages": []}
    fault = call("POST", "/api/faults", body={"protocol": "smtp", "action": "fail",
                                              "command": "MAIL", "code": 451}).json()
    assert fault["description"].startswith("smtp fail MAIL -> 451")
    assert len(mailhost_sync.faults()) == 1
    assert call("GET", "/api/faults").json()["faults"][0]["command"] == "MAIL"
    call("POST", "/api/faults", body={"protocol": "nntp", "action": "fail", "command": "X"})
    call("POST", "/api/faults", raw_body=b"{}", headers={"Content-Type": "text/plain"})
    assert call("DELETE", "/api/faults").json() == {"cleared": 1}
    assert mailhost_sync.faults() == []

    call("DELETE", "/api/messages/bm8gc3VjaA")
    call("DELETE", "/api/messages/..%2F..")
    assert call("DELETE", f"/api/messages/{first}").json() == {"deleted": 1}
    call("DELETE", "/api/messages?since=nonsense")
    assert call("DELETE", "/api/messages").json() == {"deleted": 1}
    assert call("GET", "/api/messages").json()["total"] == 0

    stream = _open_events(base)
    try:
        api.check("GET", base + "/api/events", stream[0])
    finally:
        stream[1].close()

    assert set(api.missing()) <= UNREACHABLE, api.missing()


def _open_events(base):
    """The response head of /api/events (the stream itself is read in test_events)."""
    import urllib.request

    from tests.web.helpers import Response

    r = urllib.request.urlopen(base + "/api/events", timeout=10)
    return Response(r.status, r.headers, b""), r
