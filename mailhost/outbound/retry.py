"""The retry policy: when a recipient is tried again, and when it is given up.

Per recipient: ``delay = min(retry_initial * 2**(attempts-1), retry_max)``, with one
last try at ``arrival + lifetime``; then the recipient fails (and bounces). A
destination whose sessions fail is held off for
``min(retry_initial, HOLD_OFF_BASE) * 2**(failures-1)``, at most ``hold_off_max``
(destinations.py). A 2xx outcome delivers the recipient, a 5xx one fails it at once.
"""

from __future__ import annotations

from mailhost.outbound import dsn
from mailhost.outbound.envelope import DELIVERED as ST_DELIVERED
from mailhost.outbound.envelope import FAILED, Envelope, RecipientState
from mailhost.outbound.jobs import DELIVERED, PERMANENT, Outcome
from mailhost.settings import OutboundSettings

#: The first hold-off of a destination whose sessions fail is
#: ``min(retry_initial, HOLD_OFF_BASE)``; it doubles with each failure in a row.
HOLD_OFF_BASE = 60.0
#: How long past its lifetime a pending recipient waits for its last try before the
#: clock fails it (at most; ``retry_initial`` if shorter).
EXPIRY_GRACE = 60.0


def retry_delay(attempts: int, initial: float, maximum: float) -> float:
    """The backoff after the ``attempts``-th failed try."""
    return min(initial * 2 ** max(attempts - 1, 0), maximum)


def hold_off_delay(failures: int, settings: OutboundSettings) -> float:
    """How long a destination is left alone after ``failures`` failed sessions in a row."""
    base = min(settings.retry_initial, HOLD_OFF_BASE)
    return min(base * 2 ** min(failures - 1, 30), max(settings.hold_off_max, base))


def age(env: Envelope, now: float) -> str:
    """How long ``env`` has been queued, for 'gave up after …'."""
    secs = now - env.arrival
    if secs >= 86400:
        return f"{secs / 86400:.1f} days"
    if secs >= 3600:
        return f"{secs / 3600:.1f} hours"
    return f"{secs:.0f} seconds"


def _status_code(reply: str, permanent: bool, klass: str) -> str:
    """The reply's enhanced status code, or ``<klass>.0.0`` when it has none of that class."""
    code = dsn.enhanced_status(reply, permanent)
    return code if code.startswith(klass) else f"{klass}.0.0"


def record_outcome(env: Envelope, r: RecipientState, o: Outcome, now: float, remote: str,
                   settings: OutboundSettings) -> None:
    """Apply one attempt's outcome to ``r``: delivered, failed, or due again later."""
    r.last_attempt = now
    r.remote_mta = remote
    r.last_error = o.reply
    if o.kind == DELIVERED:
        r.status = ST_DELIVERED
        r.status_code = _status_code(o.reply, False, "2")
        r.relayed = o.dsn_passed
    elif o.kind == PERMANENT:
        r.status = FAILED
        r.status_code = _status_code(o.reply, True, "5")
    else:
        r.attempts += 1
        r.status_code = _status_code(o.reply, False, "4")
        expires = env.arrival + settings.lifetime
        if now >= expires - 1e-6:
            r.status = FAILED
            r.last_error = f"{o.reply} (gave up after {age(env, now)})"
            if r.status_code == "4.0.0":
                r.status_code = "4.4.7"
        else:
            delay = retry_delay(r.attempts, settings.retry_initial, settings.retry_max)
            # At least a second, so a zero backoff cannot spin.
            r.next_attempt = max(min(now + delay, expires), now + 1.0)
