"""The web UI of a standalone ``twistd mailhost`` (Maildir store), as a Java, Node or Go
test suite would use it: mail over SMTP shows in the API, faults scripted over the API
hit the SMTP listener, and access is loopback-only or basic-auth as configured."""

from __future__ import annotations

import base64
import smtplib

import pytest

from tests.mailhost_process import free_port
from tests.web.helpers import message, request, send


def _start(mailhost_factory, **web):
    port = free_port()
    proc = mailhost_factory("web", extra={"web": {"listen": f"tcp:{port}:interface=127.0.0.1",
                                                  **web}})
    proc.configure()
    proc.ports["web"] = port  # start() waits for it too
    proc.start()
    return proc, f"http://127.0.0.1:{port}"


def test_standalone_server_serves_mail_and_scripts_faults(mailhost_factory):
    proc, base = _start(mailhost_factory, faults=True)
    send(proc.ports["smtp"], message("from twistd", "stored in Maildir\n"))
    for _ in range(50):  # bounded: the message is in the store before the 250
        listed = request(base + "/api/messages?recipient=alice").json()
        if listed["total"]:
            break
    assert listed["messages"][0]["subject"] == "from twistd"
    assert "alice@example.test" in request(base + "/api/mailboxes").json()["mailboxes"]

    added = request(base + "/api/faults", "POST", body={
        "protocol": "smtp", "action": "fail", "command": "MAIL", "code": 452,
        "message": "4.3.1 injected from the API"})
    assert added.status == 201
    with smtplib.SMTP("127.0.0.1", proc.ports["smtp"], timeout=10) as s:
        s.ehlo()
        code, text = s.mail("bob@example.test")
        assert (code, text) == (452, b"4.3.1 injected from the API")
    assert request(base + "/api/faults").json()["faults"][0]["hits"] == 1
    assert request(base + "/api/faults", "DELETE").json() == {"cleared": 1}
    assert request(base + "/api/queue").json() == {"messages": []}

    # DNS rebinding: a page on another name that resolves to 127.0.0.1 gets nothing.
    rebound = request(base + "/api/messages", headers={"Host": f"evil.example:{proc.ports['web']}"})
    assert rebound.status == 403 and rebound.json()["status"] == 403
    proc.stop()


def test_basic_auth_and_faults_off(mailhost_factory):
    proc, base = _start(mailhost_factory, username="tester", password="s3cret")
    refused = request(base + "/api/messages")
    assert refused.status == 401 and refused.headers["www-authenticate"].startswith("Basic")
    wrong = request(base + "/api/messages", headers={
        "Authorization": "Basic " + base64.b64encode(b"tester:nope").decode()})
    assert wrong.status == 401
    auth = {"Authorization": "Basic " + base64.b64encode(b"tester:s3cret").decode()}
    assert request(base + "/api/messages", headers=auth).json()["total"] == 0
    assert request(base + "/", headers=auth).status == 200
    # Faults are off unless web.faults says so: listed empty, not scriptable.
    assert request(base + "/api/faults", headers=auth).json() == {"enabled": False, "faults": []}
    off = request(base + "/api/faults", "POST", headers=auth, body={
        "protocol": "smtp", "action": "fail", "command": "MAIL"})
    assert off.status == 403 and "web.faults" in off.json()["error"]
    assert request(base + "/api/faults", "DELETE", headers=auth).status == 403
    proc.stop()


@pytest.mark.parametrize("name", ["dev.toml", "capture.toml", "production.toml"])
def test_web_is_on_in_dev_and_capture_and_off_in_production(name):
    import os
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "tap-configs", name), "rb") as f:
        web = tomllib.load(f).get("web", {})
    if name in ("dev.toml", "capture.toml"):
        port = 8025 if name == "capture.toml" else 2080  # both can run at once
        assert web["listen"] == f"tcp:{port}:interface=127.0.0.1"
        assert "username" not in web  # loopback only
    else:
        assert not web.get("listen")
