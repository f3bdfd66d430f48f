"""Blocking HTTP and SMTP helpers for the web UI tests (run in pytest's worker thread)."""

from __future__ import annotations

import json
import smtplib
import urllib.error
import urllib.request
from email.message import EmailMessage
from typing import Any


class Response:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def content_type(self) -> str:
        return (self.headers.get("content-type") or "").split(";")[0].strip()

    def json(self) -> Any:
        return json.loads(self.body)


def request(url: str, method: str = "GET", body: Any = None, headers: dict | None = None,
            raw_body: bytes | None = None) -> Response:
    data = raw_body
    hdrs = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return Response(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, e.headers, e.read())


def message(subject: str = "hello", text: str = "the text part\n", html: str | None = None,
            attachment: tuple[str, bytes] | None = None, to: str = "alice@example.test",
            sender: str = "bob@example.test") -> EmailMessage:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m.set_content(text)
    if html is not None:
        m.add_alternative(html, subtype="html")
    if attachment is not None:
        name, data = attachment
        m.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return m


def send(port: int, msg: EmailMessage, host: str = "127.0.0.1") -> None:
    with smtplib.SMTP(host, port, timeout=15) as s:
        s.send_message(msg)
