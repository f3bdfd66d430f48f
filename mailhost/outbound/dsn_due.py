"""Which delivery status notifications a queued message owes now (RFC 3461 NOTIFY):
a failure, a relayed success (when the next hop does not take DSN over), or one delay
warning after ``delay_warning`` seconds. The scheduler sends them (dsn.py builds them)
after the envelope is saved."""

from __future__ import annotations

from mailhost.outbound import dsn
from mailhost.outbound.envelope import DELIVERED as ST_DELIVERED
from mailhost.outbound.envelope import FAILED, Envelope, RecipientState
from mailhost.settings import OutboundSettings


def notify_wants(rcpt: RecipientState, what: str) -> bool:
    """RFC 3461 NOTIFY: empty means FAILURE and DELAY; NEVER means nothing."""
    if not rcpt.notify:
        return what in ("FAILURE", "DELAY")
    return what in rcpt.notify


def reports_due(env: Envelope, now: float, settings: OutboundSettings,
                ) -> list[tuple[RecipientState, dsn.RecipientReport]]:
    """The reports ``env`` owes now; recipients that owe none are marked done, and a
    delay warning marks the envelope warned."""
    out = []
    delayed_now = False
    for r in env.recipients:
        if r.dsn_done:
            continue
        if r.status == FAILED:
            if notify_wants(r, "FAILURE"):
                out.append((r, recipient_report(r, dsn.FAILED)))
            else:
                r.dsn_done = True
        elif r.status == ST_DELIVERED:
            if notify_wants(r, "SUCCESS") and not r.relayed:
                out.append((r, recipient_report(r, dsn.RELAYED)))
            else:
                r.dsn_done = True
        elif (
            settings.delay_warning > 0
            and not env.delay_warned
            and r.attempts > 0
            and now - env.arrival >= settings.delay_warning
            and notify_wants(r, "DELAY")
        ):
            rep = recipient_report(r, dsn.DELAYED)
            rep.will_retry_until = env.arrival + settings.lifetime
            out.append((r, rep))
            delayed_now = True
    if delayed_now:
        env.delay_warned = True
    return out


def recipient_report(r: RecipientState, action: str) -> dsn.RecipientReport:
    """The DSN's per-recipient fields of ``r`` for ``action``."""
    return dsn.RecipientReport(
        address=r.address,
        action=action,
        status=r.status_code or ("5.0.0" if action == dsn.FAILED else "4.0.0"),
        orcpt=r.orcpt,
        remote_mta=r.remote_mta,
        diagnostic=r.last_error,
        last_attempt=r.last_attempt or None,
    )
