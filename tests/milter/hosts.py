"""A mail host with the ``milter`` stage for the milter tests (the pipeline test's
``Host``, with no DNS needed: only the milters run)."""

from __future__ import annotations

import smtplib

from twisted.internet import threads

from tests.e2e.test_pipeline import Host, message, wait_for

__all__ = ["Host", "message", "milter_host", "smtp_send", "wait_for"]


def milter_host(tmp_path, milters: dict[str, str], stages: list[str] | None = None,
                default_action: str = "tempfail", name: str = "b",
                users: dict[str, str] | None = None,
                dns: tuple[str, int] = ("127.0.0.1", 9)) -> Host:
    host = Host(tmp_path, name, "127.0.0.1", "b.test", users or {"bob@b.test": "pw"}, dns)
    host.config.pipeline.stages = stages or ["milter"]
    host.config.pipeline.milters = dict(milters)
    host.config.pipeline.milter_default_action = default_action  # type: ignore[assignment]
    return host


def _send(host: Host, sender: str, rcpts: list[str], data: bytes,
          mail_options: tuple[str, ...] = ()) -> tuple[int, str]:
    """(code, text) of the end-of-data reply (or of the first refusal)."""
    with smtplib.SMTP(host.ip, host.port, timeout=60) as s:
        s.ehlo("client.example")
        code, text = s.mail(sender, list(mail_options))
        if code != 250:
            return code, text.decode()
        for rcpt in rcpts:
            code, text = s.rcpt(rcpt)
            if code != 250:
                return code, text.decode()
        code, text = s.data(data)
        return code, text.decode()


def smtp_send(host: Host, data: bytes, sender: str = "alice@a.test",
              rcpts: tuple[str, ...] = ("bob@b.test",), mail_options: tuple[str, ...] = ()):
    return threads.deferToThread(_send, host, sender, list(rcpts), data, mail_options)
