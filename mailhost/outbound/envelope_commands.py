"""The MAIL and RCPT command lines of one relayed message, with the parameters the
server's EHLO allows: SIZE, BODY=8BITMIME, SMTPUTF8 and DSN's RET, ENVID, NOTIFY and
ORCPT (RFC 1870, 6152, 6531, 3461)."""

from __future__ import annotations

from collections.abc import Iterable

from mailhost.outbound.envelope import Envelope, RecipientState


def xtext(value: str) -> str:
    """RFC 3461 xtext encoding for ENVID/ORCPT values."""
    out = []
    for ch in value:
        o = ord(ch)
        if 33 <= o <= 126 and ch not in "+=":
            out.append(ch)
        else:
            out.extend(f"+{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def needs_smtputf8(env: Envelope, recipients: Iterable[RecipientState]) -> bool:
    """Whether the sender or a recipient is not ASCII."""
    return not env.sender.isascii() or any(not r.address.isascii() for r in recipients)


def mail_command(env: Envelope, extensions: dict[str, str], utf8: bool) -> str:
    """``MAIL FROM:<…>`` and its parameters."""
    dsn = "DSN" in extensions
    mail = f"MAIL FROM:<{env.sender}>"
    if "SIZE" in extensions and env.size:
        mail += f" SIZE={env.size}"
    if "8BITMIME" in extensions:
        mail += " BODY=8BITMIME"
    if utf8:
        mail += " SMTPUTF8"
    if dsn and env.ret:
        mail += f" RET={env.ret}"
    if dsn and env.envid:
        mail += f" ENVID={xtext(env.envid)}"
    return mail


def rcpt_command(r: RecipientState, extensions: dict[str, str]) -> bytes:
    """``RCPT TO:<…>`` and its DSN parameters, encoded."""
    dsn = "DSN" in extensions
    rcpt = f"RCPT TO:<{r.address}>"
    if dsn and r.notify:
        rcpt += " NOTIFY=" + ",".join(r.notify)
    if dsn and r.orcpt:
        kind, _, value = r.orcpt.partition(";")
        rcpt += f" ORCPT={kind};{xtext(value)}" if value else ""
    return rcpt.encode("utf-8")
