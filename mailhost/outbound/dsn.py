"""RFC 3464 delivery status notifications (bounces, delay warnings, success reports).

A DSN is ``multipart/report; report-type=delivery-status`` with three parts: a
human-readable text, the machine-readable ``message/delivery-status``, and the
original headers (``text/rfc822-headers``) or, with RET=FULL, the whole original
(``message/rfc822``). The original is streamed in bounded chunks, so bouncing a
large message costs no memory.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, formatdate

from mailhost.outbound.spool import header_block, open_message_reader

FAILED = "failed"
DELAYED = "delayed"
DELIVERED = "delivered"
RELAYED = "relayed"
EXPANDED = "expanded"

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass
class RecipientReport:
    """One recipient's line in the report."""

    address: str
    action: str  # failed / delayed / delivered / relayed
    status: str  # enhanced status code, e.g. "5.1.1"
    orcpt: str | None = None
    remote_mta: str = ""
    diagnostic: str = ""  # the remote reply, e.g. "550 5.1.1 no such user"
    last_attempt: float | None = None
    will_retry_until: float | None = None


def enhanced_status(reply: str, permanent: bool) -> str:
    """The enhanced code of an SMTP reply text ('550 5.1.1 ...'), else a generic one."""
    text = reply.strip()
    parts = text.split(None, 1)
    if len(parts) == 2 and parts[0][:3].isdigit():
        m = _ENHANCED.match(parts[1])
        if m:
            return ".".join(m.groups())
    m = _ENHANCED.match(text)
    if m:
        return ".".join(m.groups())
    return "5.0.0" if permanent else "4.0.0"


def _date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, tz=UTC))


def _orcpt_field(orcpt: str) -> str:
    """ORCPT is 'addr-type;xtext'; the DSN field is 'addr-type; address'."""
    kind, sep, value = orcpt.partition(";")
    if not sep:
        return f"rfc822; {orcpt}"
    decoded = re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)
    return f"{kind.strip()}; {decoded.strip()}"


def _clean(value: str) -> str:
    """Header values must stay on one line."""
    return " ".join(value.replace("\r", " ").replace("\n", " ").split())


_SUBJECTS = {
    FAILED: "Undelivered Mail Returned to Sender",
    DELAYED: "Delayed Mail (still being retried)",
    DELIVERED: "Successful Mail Delivery Report",
    RELAYED: "Successful Mail Delivery Report",
}

_INTRO = {
    FAILED: "Your message could not be delivered to one or more recipients.\n"
    "This is a permanent error; the message will not be retried.",
    DELAYED: "Your message has not been delivered yet to one or more recipients.\n"
    "Delivery will be retried; you do not need to send it again.",
    DELIVERED: "Your message was delivered to the recipients listed below.",
    RELAYED: "Your message was delivered to the recipients listed below.",
}


def render_head(
    *,
    hostname: str,
    sender: str,
    reports: Sequence[RecipientReport],
    arrival: float,
    envid: str | None,
    full: bool,
    now: float,
    boundary: str | None = None,
) -> tuple[bytes, bytes]:
    """The DSN before and after the original content: (head, tail)."""
    boundary = boundary or f"{secrets.token_hex(12)}/{hostname}"
    kind = FAILED if any(r.action == FAILED for r in reports) else reports[0].action
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        f"Subject: {_SUBJECTS.get(kind, 'Delivery Status Notification')}",
        f"Date: {formatdate(now, localtime=False)}",
        f"Message-ID: <{secrets.token_hex(10)}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"This is the mail system at host {hostname}.",
        "",
        *_INTRO.get(kind, "").split("\n"),
        "",
    ]
    for r in reports:
        line = f"<{r.address}>: {r.action}"
        if r.diagnostic:
            line += f" ({'host ' + r.remote_mta + ' said: ' if r.remote_mta else ''}{_clean(r.diagnostic)})"
        lines.append(line)
    lines += [
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {hostname}",
    ]
    if envid:
        lines.append(f"Original-Envelope-Id: {_clean(envid)}")
    lines.append(f"Arrival-Date: {_date(arrival)}")
    for r in reports:
        lines.append("")
        lines.append(f"Final-Recipient: rfc822; {r.address}")
        if r.orcpt:
            lines.append(f"Original-Recipient: {_orcpt_field(r.orcpt)}")
        lines.append(f"Action: {r.action}")
        lines.append(f"Status: {r.status}")
        if r.remote_mta:
            lines.append(f"Remote-MTA: dns; {r.remote_mta}")
        if r.diagnostic:
            lines.append(f"Diagnostic-Code: smtp; {_clean(r.diagnostic)}")
        if r.last_attempt:
            lines.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")
        if r.will_retry_until:
            lines.append(f"Will-Retry-Until: {_date(r.will_retry_until)}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Description: "
        + ("Undelivered Message" if full else "Undelivered Message Headers"),
        "Content-Type: " + ("message/rfc822" if full else "text/rfc822-headers"),
        "",
        "",
    ]
    head = "\r\n".join(lines).encode("utf-8")
    # The original content ends with CRLF (headers) or we add one; then the closing
    # delimiter.
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head, tail


async def write_dsn(
    write: Callable[[bytes], None],
    *,
    hostname: str,
    sender: str,
    reports: Sequence[RecipientReport],
    arrival: float,
    envid: str | None,
    ret: str | None,
    original_path: str,
    now: float,
    original_offset: int = 0,
) -> None:
    """Stream a whole DSN into ``write``; the original comes through the store's message
    reader (bounded chunks, off the reactor thread)."""
    full = (ret or "").upper() == "FULL"
    head, tail = render_head(
        hostname=hostname,
        sender=sender,
        reports=reports,
        arrival=arrival,
        envid=envid,
        full=full,
        now=now,
    )
    write(head)
    reader = await open_message_reader(original_path, original_offset)
    try:
        if full:
            last = b""
            while chunk := await reader.read():
                write(chunk)
                last = chunk
            if not last.endswith(b"\n"):
                write(b"\r\n")
        else:
            write(await reader.call(header_block))
    finally:
        reader.close()
    write(tail)
