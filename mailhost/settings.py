"""Frozen settings, one object per part, made from a ``Config`` by the composition root.

``mailhost.config.Config`` is the model of the file: the loader fills it in, and
``check-config`` prints it. No running part holds it. ``mailhost.service`` turns it
into the immutable objects below and gives each part the one it needs; a reload
makes new ones from the re-read file and hands them over, so no part ever sees a
value change under it, and no two parts share a mutable object.

Each class names only what its part reads. A value that two sections provide (the
host name, the TLS handshake deadline) is copied into every part that uses it, so a
part never reaches into another section. Lists become tuples and tables read-only
mappings, so a settings object cannot be changed through one of its fields either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from mailhost.config import Config

PlaintextPolicy = Literal["no", "loopback", "yes"]
DeletePolicy = Literal["expunge", "flag"]
TLSPolicy = Literal["opportunistic", "verify", "none"]
BareNewlinePolicy = Literal["normalize", "reject"]


def _frozen_table(table: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(table))


@dataclass(frozen=True)
class SMTPSettings:
    """What an SMTP session reads: ``[smtp]`` limits, the host name, the TLS deadline
    and ``submission.enforce_sender`` (used by submission listeners only)."""

    hostname: str = "localhost"
    max_message_size: int = 32 * 1024 * 1024
    max_recipients: int = 1000
    max_line_length: int = 65536
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    pre_mail_timeout: float = 300.0
    min_data_rate: float = 500.0
    max_junk_commands: int = 20
    hard_error_limit: int = 20
    soft_error_limit: int = 10
    error_sleep_time: float = 1.0
    max_hops: int = 50
    bare_newline: BareNewlinePolicy = "normalize"
    handshake_timeout: float = 30.0
    enforce_sender: bool = True

    @classmethod
    def from_config(cls, config: Config) -> SMTPSettings:
        s = config.smtp
        return cls(
            hostname=config.server.hostname,
            max_message_size=s.max_message_size,
            max_recipients=s.max_recipients,
            max_line_length=s.max_line_length,
            command_timeout=s.command_timeout,
            data_timeout=s.data_timeout,
            pre_mail_timeout=s.pre_mail_timeout,
            min_data_rate=s.min_data_rate,
            max_junk_commands=s.max_junk_commands,
            hard_error_limit=s.hard_error_limit,
            soft_error_limit=s.soft_error_limit,
            error_sleep_time=s.error_sleep_time,
            max_hops=s.max_hops,
            bare_newline=s.bare_newline,
            handshake_timeout=config.tls.handshake_timeout,
            # Capture mode: an app logged in as anyone may send as anyone.
            enforce_sender=config.submission.enforce_sender and not config.capture.enabled,
        )


@dataclass(frozen=True)
class RelaySettings:
    """What SMTP's recipient policy reads: who may relay, and the domain of a bare
    ``<postmaster>``."""

    relay_networks: tuple[str, ...] = ()
    default_domain: str = "example.test"

    @classmethod
    def from_config(cls, config: Config) -> RelaySettings:
        return cls(tuple(config.smtp.relay_networks), config.server.domains[0])


@dataclass(frozen=True)
class POP3Settings:
    """What a POP3 session reads."""

    delete: DeletePolicy = "expunge"
    timeout: float = 600.0
    preauth_timeout: float = 120.0
    handshake_timeout: float = 30.0

    @classmethod
    def from_config(cls, config: Config) -> POP3Settings:
        p = config.pop3
        return cls(p.delete, p.timeout, p.preauth_timeout, config.tls.handshake_timeout)


@dataclass(frozen=True)
class IMAPSettings:
    """What an IMAP session reads."""

    max_literal_size: int = 64 * 1024 * 1024
    max_line_length: int = 65536
    timeout: float = 1800.0
    preauth_timeout: float = 60.0
    handshake_timeout: float = 30.0
    #: URLAUTH (RFC 4467) key files; "" turns URLAUTH off.
    urlauth_dir: str = ""

    @classmethod
    def from_config(cls, config: Config) -> IMAPSettings:
        i = config.imap
        return cls(i.max_literal_size, i.max_line_length, i.timeout, i.preauth_timeout,
                   config.tls.handshake_timeout,
                   config.data_path(i.urlauth_dir) if i.urlauth_dir else "")


@dataclass(frozen=True)
class AuthSettings:
    """What the login service and its throttle read."""

    allow_plaintext: PlaintextPolicy = "no"
    max_failures: int = 5
    failure_window: float = 300.0
    lockout: float = 300.0
    known_good_ttl: float = 30 * 86400.0

    @classmethod
    def from_config(cls, config: Config) -> AuthSettings:
        a = config.auth
        return cls(config.server.allow_plaintext_auth, a.max_failures, a.failure_window,
                   a.lockout, a.known_good_ttl)


@dataclass(frozen=True)
class DirectorySettings:
    """Which domains are local, and where unclaimed postmaster mail goes."""

    domains: tuple[str, ...] = ("example.test",)
    postmaster: str = ""

    @classmethod
    def from_config(cls, config: Config) -> DirectorySettings:
        return cls(tuple(config.server.domains), config.auth.postmaster)


@dataclass(frozen=True)
class KindLimitSettings:
    """Concurrent connections of one listener kind: in all, and per client address."""

    max_connections: int
    max_connections_per_ip: int


@dataclass(frozen=True)
class LimitsSettings:
    """``[limits]`` plus each kind's connection caps (submission counts with SMTP's)."""

    hostname: str = "localhost"
    connection_rate: float = 120.0
    connection_burst: int = 60
    exempt_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    evict_idle: bool = True
    smtp: KindLimitSettings = KindLimitSettings(200, 20)
    pop3: KindLimitSettings = KindLimitSettings(200, 20)
    imap: KindLimitSettings = KindLimitSettings(500, 50)

    @classmethod
    def from_config(cls, config: Config) -> LimitsSettings:
        lim = config.limits
        return cls(
            hostname=config.server.hostname,
            connection_rate=lim.connection_rate,
            connection_burst=lim.connection_burst,
            exempt_networks=tuple(lim.exempt_networks),
            evict_idle=lim.evict_idle,
            smtp=KindLimitSettings(config.smtp.max_connections,
                                   config.smtp.max_connections_per_ip),
            pop3=KindLimitSettings(config.pop3.max_connections,
                                   config.pop3.max_connections_per_ip),
            imap=KindLimitSettings(config.imap.max_connections,
                                   config.imap.max_connections_per_ip),
        )


@dataclass(frozen=True)
class OutboundSettings:
    """What the queue runner reads: ``[outbound]`` (``queue_dir`` made absolute), the
    host name, the hop limit of ``[smtp]`` and the shutdown grace."""

    queue_dir: str = "queue"
    hostname: str = "localhost"
    max_hops: int = 50
    shutdown_grace: float = 30.0
    smarthost: str = ""
    smarthost_user: str = ""
    smarthost_password: str = field(default="", repr=False)
    resolver: str = "system"
    port: int = 25
    tls_policy: TLSPolicy = "opportunistic"
    tls_policy_domains: Mapping[str, str] = field(
        default_factory=lambda: _frozen_table({}))
    retry_initial: float = 300.0
    retry_max: float = 3600.0
    lifetime: float = 5 * 24 * 3600.0
    delay_warning: float = 0.0
    max_concurrency: int = 20
    max_per_domain: int = 5
    connect_timeout: float = 30.0
    source_address: str = ""
    source_address6: str = ""
    greeting_timeout: float = 300.0
    command_timeout: float = 300.0
    data_init_timeout: float = 120.0
    data_block_timeout: float = 180.0
    final_timeout: float = 600.0
    reply_max_lines: int = 100
    reply_max_bytes: int = 65536
    connect_rate: float = 2.0
    connect_burst: int = 5
    hold_off_max: float = 3600.0
    scan_interval: float = 30.0
    fsync: bool = True
    mta_sts: bool = False
    dane: bool = False
    mta_sts_ca_file: str = ""
    mta_sts_port: int = 443
    mta_sts_timeout: float = 30.0
    # Under server.data_dir: cached MTA-STS policies, and TLS-RPT records by day.
    mta_sts_cache_dir: str = ""
    tls_report_dir: str = ""
    # [queue]: "spool" or "postgresql" (then the database, the lease and the poll).
    queue_backend: str = "spool"
    queue_dsn: str = field(default="", repr=False)
    queue_lease: float = 60.0
    queue_poll: float = 1.0

    @classmethod
    def from_config(cls, config: Config) -> OutboundSettings:
        o = config.outbound
        return cls(
            queue_dir=config.data_path(o.queue_dir),
            hostname=config.server.hostname,
            max_hops=config.smtp.max_hops,
            shutdown_grace=config.server.shutdown_grace,
            smarthost=o.smarthost,
            smarthost_user=o.smarthost_user,
            smarthost_password=o.smarthost_password,
            resolver=o.resolver,
            port=o.port,
            tls_policy=o.tls_policy,
            tls_policy_domains=_frozen_table(o.tls_policy_domains),
            retry_initial=o.retry_initial,
            retry_max=o.retry_max,
            lifetime=o.lifetime,
            delay_warning=o.delay_warning,
            max_concurrency=o.max_concurrency,
            max_per_domain=o.max_per_domain,
            connect_timeout=o.connect_timeout,
            source_address=o.source_address,
            source_address6=o.source_address6,
            greeting_timeout=o.greeting_timeout,
            command_timeout=o.command_timeout,
            data_init_timeout=o.data_init_timeout,
            data_block_timeout=o.data_block_timeout,
            final_timeout=o.final_timeout,
            reply_max_lines=o.reply_max_lines,
            reply_max_bytes=o.reply_max_bytes,
            connect_rate=o.connect_rate,
            connect_burst=o.connect_burst,
            hold_off_max=o.hold_off_max,
            scan_interval=o.scan_interval,
            fsync=o.fsync,
            mta_sts=o.mta_sts,
            dane=o.dane,
            mta_sts_ca_file=o.mta_sts_ca_file,
            mta_sts_port=o.mta_sts_port,
            mta_sts_timeout=o.mta_sts_timeout,
            mta_sts_cache_dir=config.data_path("mta-sts"),
            tls_report_dir=config.data_path("tls-reports"),
            queue_backend=config.queue.backend,
            queue_dsn=config.queue.dsn or config.store.dsn,
            queue_lease=config.queue.lease,
            queue_poll=config.queue.poll,
        )


@dataclass(frozen=True)
class CaptureSettings:
    """``[capture]``: whether the composition root builds the capture sink (every
    address local, any login accepted, no outbound) instead of the real directory."""

    enabled: bool = False

    @classmethod
    def from_config(cls, config: Config) -> CaptureSettings:
        return cls(config.capture.enabled)


@dataclass(frozen=True)
class Settings:
    """Every part's settings, made from one ``Config`` at once."""

    smtp: SMTPSettings
    relay: RelaySettings
    pop3: POP3Settings
    imap: IMAPSettings
    auth: AuthSettings
    directory: DirectorySettings
    limits: LimitsSettings
    outbound: OutboundSettings
    capture: CaptureSettings = CaptureSettings()

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        return cls(
            smtp=SMTPSettings.from_config(config),
            relay=RelaySettings.from_config(config),
            pop3=POP3Settings.from_config(config),
            imap=IMAPSettings.from_config(config),
            auth=AuthSettings.from_config(config),
            directory=DirectorySettings.from_config(config),
            limits=LimitsSettings.from_config(config),
            outbound=OutboundSettings.from_config(config),
            capture=CaptureSettings.from_config(config),
        )
