"""Per-user outbound limits: messages per hour, recipients per message.

So that a stolen password cannot send 100,000 messages: each authenticated user has
a token bucket holding ``messages_per_hour`` tokens, refilled at that many per hour;
each MAIL FROM takes one, and a MAIL FROM that finds the bucket empty gets ``450
4.7.1`` (a well-behaved client queues and retries later; a spammer's run stops).
A token bucket rather than a sliding window of timestamps: O(1) memory and time per
user whatever the limit, and a user who was quiet may send a burst of a full hour's
worth at once, which is what people do after a meeting. The RCPT that goes past
``recipients_per_message`` gets ``452 4.5.3`` (RFC 5321 §4.5.3.1.10: the client
sends the rest in another transaction, which the hourly limit then counts).

Both limits come from ``[ratelimit]``, and a user's passwd line may override them
(``messages_per_hour=1000``, ``recipients_per_message=500``; ``0`` is no limit).

The state is one ``RateLimiter`` in memory, shared by every SMTP listener of the
host, so the limit holds across ports and connections; it does not survive a
restart (the worst case is one more hour's allowance). With ``server.workers = N``
each worker's limiter is replicated to the others (``mailhost.workers.shared``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mailhost.message.checks import ClientContext, IEnvelopeCheck
from mailhost.message.stage import Verdict

log = Logger()

HOUR = 3600.0
#: passwd fields that override the defaults.
MESSAGES_FIELD = "messages_per_hour"
RECIPIENTS_FIELD = "recipients_per_message"


def _no_fields(user: str) -> Mapping[str, str]:
    return {}


class RateLimiter:
    """Token buckets by user. ``fields(user)`` gives the user's passwd fields."""

    def __init__(self, messages_per_hour: int = 0, recipients_per_message: int = 0,
                 fields: Callable[[str], Mapping[str, str]] = _no_fields,
                 clock: IReactorTime | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.clock = clock
        self.messages_per_hour = messages_per_hour
        self.recipients_per_message = recipients_per_message
        self.fields = fields
        #: user -> (tokens, time they were counted, the user's limit then)
        self._buckets: dict[str, tuple[float, float, int]] = {}
        #: The table is swept for refilled buckets when it reaches this size.
        self._sweep_at = 1024

    def _limit(self, user: str, key: str, default: int) -> int:
        value = self.fields(user).get(key)
        if value is None:
            return default
        try:
            limit = int(value)
        except ValueError:
            limit = -1
        if limit < 0:
            log.warn("passwd: {user}: {key}={value!r} is not a number; using {default}",
                     user=user, key=key, value=value, default=default, event="ratelimit.field")
            return default
        return limit

    def messages_limit(self, user: str) -> int:
        return self._limit(user, MESSAGES_FIELD, self.messages_per_hour)

    def recipients_limit(self, user: str) -> int:
        return self._limit(user, RECIPIENTS_FIELD, self.recipients_per_message)

    def take_message(self, user: str) -> float:
        """Take one message from ``user``'s bucket: 0.0 if it was there, else the
        seconds until one will be."""
        limit = self.messages_limit(user)
        if limit <= 0:
            self._buckets.pop(user, None)
            return 0.0
        now = self.clock.seconds()
        tokens, then, _ = self._buckets.get(user, (float(limit), now, limit))
        rate = limit / HOUR
        tokens = min(float(limit), tokens + (now - then) * rate)
        if tokens < 1.0:
            self._buckets[user] = (tokens, now, limit)
            return (1.0 - tokens) / rate
        self._buckets[user] = (tokens - 1.0, now, limit)
        if len(self._buckets) >= self._sweep_at:
            self._forget_full(now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled, so the table holds only recent senders.
        The next sweep waits until the table has doubled, so the cost per message
        stays constant however many users are sending."""
        for user, (tokens, then, limit) in list(self._buckets.items()):
            if tokens + (now - then) * limit / HOUR >= limit:
                del self._buckets[user]
        self._sweep_at = max(1024, 2 * len(self._buckets))


@implementer(IEnvelopeCheck)
class RateLimitCheck:
    """Implements: IEnvelopeCheck (``ratelimit``), for authenticated users only."""

    name = "ratelimit"

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    def connect(self, client: ClientContext) -> None:
        pass

    def mail(self, client: ClientContext, sender: str) -> Verdict | None:
        if client.user is None:
            return None
        wait = self.limiter.take_message(client.user)
        if not wait:
            return None
        limit = self.limiter.messages_limit(client.user)
        log.warn("ratelimit: {user} over {limit} messages per hour", user=client.user,
                 limit=limit, event="ratelimit.messages")
        return Verdict.tempfail(
            f"Error: too many messages: limit is {limit} per hour, "
            f"try again in {int(wait) + 1} seconds", code=450, status="4.7.1")

    def rcpt(self, client: ClientContext, sender: str, recipient: str,
             accepted: int) -> Verdict | None:
        if client.user is None:
            return None
        limit = self.limiter.recipients_limit(client.user)
        if limit <= 0 or accepted < limit:
            return None
        return Verdict.tempfail(f"Error: too many recipients: limit is {limit} per message",
                                code=452, status="4.5.3")


def passwd_fields(passwd: Any) -> Callable[[str], Mapping[str, str]]:
    """``fields(user)`` over a ``PasswdFile`` (re-read when it changes)."""

    def fields(user: str) -> Mapping[str, str]:
        entry = passwd.entries().get(user.lower())
        return entry.extra if entry is not None else {}

    return fields


__all__ = ["RateLimitCheck", "RateLimiter", "passwd_fields"]
