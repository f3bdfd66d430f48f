"""Anti-abuse checks of the SMTP envelope, one small module each:

============== ===============================================================
``fcrdns``      forward-confirmed reverse DNS, for ``Received:`` (``smtp.fcrdns``)
``dnsbl``       DNS block- and allowlists, refused at RCPT (``[dnsbl]``)
``ratelimit``   messages per hour and recipients per message of a user (``[ratelimit]``)
``greylist``    greylisting of new triplets at RCPT (``[greylist]``)
``networks``    client addresses, CIDR lists and allowlists
============== ===============================================================

They are ``IEnvelopeCheck`` implementations (``mailhost.message.checks``): SMTP runs
them at connect, MAIL FROM and RCPT, where Postfix makes the same decisions, so no
body is taken for a message that will be refused. ``service.py`` calls
``build_checks`` with the frozen ``AbuseSettings`` and the collaborators; only it
imports this package.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application.service import IService

from mailhost.abuse.networks import Allowlist, parse_networks
from mailhost.dns.interfaces import IDNSLookup
from mailhost.message.checks import EnvelopeChecks, IEnvelopeCheck


class AbuseConfigError(ValueError):
    """A setting of ``[dnsbl]``, ``[greylist]`` or ``[ratelimit]`` that cannot work;
    the message names the key."""


@dataclass(frozen=True)
class AbuseSettings:
    """What the envelope checks read: ``[dnsbl]``, ``[greylist]``, ``[ratelimit]``,
    ``smtp.fcrdns`` and (exempt from DNSBLs and greylisting) ``smtp.relay_networks``."""

    fcrdns: str = "off"
    dnsbl_zones: tuple[str, ...] = ()
    dnswl_zones: tuple[str, ...] = ()
    dnsbl_threshold: int = 1
    greylist: bool = False
    greylist_delay: float = 300.0
    greylist_pending_ttl: float = 86400.0
    greylist_passed_ttl: float = 36 * 86400.0
    greylist_path: str = "greylist.sqlite"
    allow_clients: tuple[str, ...] = ()
    allow_sender_domains: tuple[str, ...] = ()
    allow_recipients: tuple[str, ...] = ()
    messages_per_hour: int = 0
    recipients_per_message: int = 0
    relay_networks: tuple[str, ...] = ()
    #: ``dns.timeout``: the connect lookups are settled this long after the connect.
    dns_timeout: float = 5.0

    @classmethod
    def from_config(cls, config: Any) -> AbuseSettings:
        d, g, r = config.dnsbl, config.greylist, config.ratelimit
        return cls(config.smtp.fcrdns, tuple(d.zones), tuple(d.allow_zones), d.threshold,
                   g.enabled, g.delay, g.pending_ttl, g.passed_ttl, config.data_path(g.path),
                   tuple(g.allow_clients), tuple(g.allow_sender_domains),
                   tuple(g.allow_recipients), r.messages_per_hour, r.recipients_per_message,
                   tuple(config.smtp.relay_networks), config.dns.timeout)

    @property
    def needs_dns(self) -> bool:
        return self.fcrdns != "off" or bool(self.dnsbl_zones or self.dnswl_zones)

    @property
    def enabled(self) -> bool:
        return (self.needs_dns or self.greylist or self.messages_per_hour > 0
                or self.recipients_per_message > 0)


def build_checks(settings: AbuseSettings, lookup: IDNSLookup | None,
                 fields: Callable[[str], Mapping[str, str]] | None = None,
                 reactor: Any = None, clock: Any = None,
                 ) -> tuple[EnvelopeChecks, list[IService]]:
    """The configured checks, in the order they answer (rate limits, FCrDNS, DNSBLs,
    greylisting: a listed client is refused rather than greylisted), and the services
    they need run (the greylist database's thread). ``fields(user)`` gives a user's
    passwd fields (per-user limits). The rate limiter is built even when no default
    limit is set, so a user's own passwd limit always applies."""
    from mailhost.abuse.ratelimit import RateLimitCheck, RateLimiter

    try:
        exempt = parse_networks(settings.relay_networks, "smtp.relay_networks")
        allow = Allowlist.parse(settings.allow_clients, settings.allow_sender_domains,
                                settings.allow_recipients, key="greylist.allow")
    except ValueError as e:
        raise AbuseConfigError(str(e)) from None
    checks: list[IEnvelopeCheck] = []
    services: list[IService] = []
    limiter = RateLimiter(settings.messages_per_hour, settings.recipients_per_message,
                          **({"fields": fields} if fields is not None else {}),
                          clock=clock if clock is not None else reactor)
    checks.append(RateLimitCheck(limiter))
    if settings.fcrdns != "off" and lookup is not None:
        from mailhost.abuse.fcrdns import FCrDNSCheck

        checks.append(FCrDNSCheck(lookup, require=settings.fcrdns == "require"))
    if (settings.dnsbl_zones or settings.dnswl_zones) and lookup is not None:
        from mailhost.abuse.dnsbl import DNSBLCheck, Zone, ZoneSpecError

        try:
            block = [Zone.parse(z) for z in settings.dnsbl_zones]
        except ZoneSpecError as e:
            raise AbuseConfigError(f"dnsbl.zones: {e}") from None
        try:
            allowzones = [Zone.parse(z) for z in settings.dnswl_zones]
        except ZoneSpecError as e:
            raise AbuseConfigError(f"dnsbl.allow_zones: {e}") from None
        if settings.dnsbl_threshold < 1:
            raise AbuseConfigError("dnsbl.threshold: must be at least 1")
        checks.append(DNSBLCheck(lookup, block, allowzones, settings.dnsbl_threshold, exempt))
    if settings.greylist:
        from mailhost.abuse.greylist import GreylistCheck, GreylistDB, GreylistService

        db = GreylistDB(settings.greylist_path, reactor=reactor, clock=clock,
                        delay=settings.greylist_delay, pending_ttl=settings.greylist_pending_ttl,
                        passed_ttl=settings.greylist_passed_ttl)
        services.append(GreylistService(db))
        checks.append(GreylistCheck(db, allow, exempt))
    return EnvelopeChecks(checks, deadline=settings.dns_timeout,
                          clock=clock if clock is not None else reactor), services


__all__ = ["AbuseConfigError", "AbuseSettings", "build_checks"]
