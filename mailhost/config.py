"""The configuration model: TOML file, then command-line overrides, then validation.

Every key lives in one section dataclass below, with its default. The loader is
generic: it checks each value against the field's annotation, so adding a key means
adding a field, and ``docs/configuration.md`` is checked against these classes.
A bad file never produces a traceback: ``ConfigError`` carries one line that names
the key and the problem.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(Exception):
    """A one-line, user-facing description of what is wrong with the config."""


@dataclass
class ServerConfig:
    """Identity of this mail host and where it keeps its data."""

    hostname: str = "localhost"
    domains: list[str] = field(default_factory=lambda: ["example.test"])
    data_dir: str = "./mailhost-data"
    # "no": plaintext auth only over TLS; "loopback": also on 127/8 and ::1; "yes": always.
    allow_plaintext_auth: Literal["no", "loopback", "yes"] = "no"
    log_format: Literal["text", "json"] = "text"
    # twistd's log file (--logfile): rotated at this size, this many old files kept;
    # 0 files keeps every rotated file (twistd's own default).
    log_max_bytes: int = 10_000_000
    log_max_files: int = 10
    # Seconds given to in-flight transactions on shutdown.
    shutdown_grace: float = 30.0
    # Reactor processes serving the same listeners (mailhost.workers); "auto" = one
    # per core. 1 runs everything in the twistd process itself.
    workers: int | Literal["auto"] = 1


@dataclass
class StoreConfig:
    """The mail store backend."""

    backend: Literal["maildir", "memory", "postgresql"] = "maildir"
    # Maildir root; relative paths are under server.data_dir.
    path: str = "mail"
    # backend = "postgresql": the database (libpq URI or key=value string).
    dsn: str = ""
    fsync: bool = True
    # How open folders notice other programs' changes (Dovecot, mutt, an MDA):
    # "inotify" (polling where it is unavailable) or "poll".
    watch: Literal["inotify", "poll"] = "inotify"
    # Permissions of what the Maildir store creates (see store_modes): octal strings,
    # and a group name or number ("" = the process's group).
    file_mode: str = "0600"
    dir_mode: str = "0700"
    group: str | int = ""
    # Storage limit of a user whose passwd line has no quota= (or quota=0): "500M",
    # "2G"; "0" = unlimited.
    default_quota: str = "0"


@dataclass
class AuthConfig:
    """Credential files; relative paths are under server.data_dir."""

    # "passwd": the passwd file; "postgresql": the users table of auth.dsn (or, when
    # that is empty, store.dsn), shared by every node.
    backend: Literal["passwd", "postgresql"] = "passwd"
    dsn: str = ""
    passwd_file: str = "passwd"
    aliases_file: str = "aliases"
    # Create postmaster@<first domain> with a random password when passwd is empty.
    create_postmaster: bool = True
    # Failed-login throttling per client address, across protocols.
    max_failures: int = 5
    failure_window: float = 300.0
    lockout: float = 300.0
    # Seconds a successful verification is cached (0 disables the cache).
    cache_ttl: float = 300.0
    # Seconds a (user, client) pair is remembered after a successful login; its
    # password checks go ahead of other clients' (mailhost.auth.verify_queue).
    known_good_ttl: float = 30 * 86400.0
    # Mailbox for postmaster@<every local domain> and <postmaster> when no user or
    # alias of that name exists; "" = postmaster@<first domain> if it is a user, else
    # the first user of the passwd file (RFC 5321 4.5.1).
    postmaster: str = ""


@dataclass
class TLSConfig:
    """Certificate for STARTTLS/STLS and implicit-TLS listeners; empty means no TLS."""

    cert: str = ""
    key: str = ""
    min_version: Literal["1.2", "1.3"] = "1.2"
    # Seconds a client of an implicit-TLS listener (465, 993, 995) has to finish the
    # TLS handshake before it is disconnected.
    handshake_timeout: float = 30.0
    # TLS 1.2 cipher suites: "aead" (ECDHE/DHE with AES-GCM or ChaCha20-Poly1305 only)
    # or "legacy" (also the CBC suites, for old clients). TLS 1.3 is always AEAD.
    ciphers: Literal["aead", "legacy"] = "aead"


@dataclass
class SMTPConfig:
    """Inbound ESMTP (port 25): mail for the local domains."""

    listen: list[str] = field(default_factory=lambda: ["tcp:25"])
    listen_tls: list[str] = field(default_factory=list)
    max_message_size: int = 32 * 1024 * 1024
    max_recipients: int = 1000
    # Bytes that must stay free on the data directory, the Maildir root and the queue
    # (each file system) for MAIL and RCPT to be accepted; below it, or below it plus
    # a declared SIZE, 452 4.3.1 (Postfix queue_minfree). 0 = no check.
    min_free_space: int = 50 * 1024 * 1024
    max_line_length: int = 65536
    # Seconds to send a whole command line (bytes that do not end it do not count).
    command_timeout: float = 300.0
    # Seconds of DATA/BDAT time budget, refilled by min_data_rate (see docs).
    data_timeout: float = 600.0
    # Seconds from connect to the first MAIL FROM; 0 = no limit.
    pre_mail_timeout: float = 300.0
    # Bytes per second a DATA/BDAT upload must keep up on average; 0 = no minimum.
    min_data_rate: float = 500.0
    max_connections: int = 200
    max_connections_per_ip: int = 20
    max_junk_commands: int = 20
    # Error replies (4xx/5xx) a session may get without delivering mail before
    # 421 and close (Postfix smtpd_hard_error_limit); from soft_error_limit on, each
    # error reply is delayed by error_sleep_time times the errors over the soft limit.
    hard_error_limit: int = 20
    soft_error_limit: int = 10
    error_sleep_time: float = 1.0
    max_hops: int = 50
    # A bare CR or LF in DATA/BDAT: "normalize" it to CRLF, or "reject" the message
    # (550 5.5.2, then close; Postfix smtpd_forbid_bare_newline). See docs.
    bare_newline: Literal["normalize", "reject"] = "normalize"
    # Networks allowed to relay without AUTH (CIDR).
    relay_networks: list[str] = field(default_factory=list)
    # Forward-confirmed reverse DNS of clients (mailhost.abuse.fcrdns): "off"; "record"
    # the name in Received:; "require" it, refusing unconfirmed clients at RCPT.
    fcrdns: Literal["off", "record", "require"] = "off"


@dataclass
class SubmissionConfig:
    """Authenticated submission (587 with STARTTLS, 465 implicit TLS)."""

    listen: list[str] = field(default_factory=list)
    listen_tls: list[str] = field(default_factory=list)
    # MAIL FROM must be the authenticated user or one of their aliases.
    enforce_sender: bool = True


@dataclass
class POP3Config:
    listen: list[str] = field(default_factory=lambda: ["tcp:110"])
    listen_tls: list[str] = field(default_factory=list)
    # "expunge": QUIT removes DELEted messages; "flag": only hide them and set \Deleted.
    delete: Literal["expunge", "flag"] = "expunge"
    # Seconds to send a whole command line.
    timeout: float = 600.0
    # Seconds from connect to a successful login; 0 = no limit.
    preauth_timeout: float = 120.0
    max_connections: int = 200
    # Concurrent connections from one client address (IPv6: one /64); 0 = unlimited.
    max_connections_per_ip: int = 20


@dataclass
class IMAPConfig:
    listen: list[str] = field(default_factory=lambda: ["tcp:143"])
    listen_tls: list[str] = field(default_factory=list)
    max_literal_size: int = 64 * 1024 * 1024
    max_line_length: int = 65536
    timeout: float = 1800.0
    preauth_timeout: float = 60.0
    max_connections: int = 500
    # Concurrent connections from one client address (IPv6: one /64); 0 = unlimited.
    max_connections_per_ip: int = 50
    # URLAUTH (RFC 4467) mailbox access keys, one 0600 file per user; "" = no URLAUTH.
    urlauth_dir: str = "urlauth"


@dataclass
class OutboundConfig:
    """The outbound queue and SMTP client."""

    # false: no spool, relay client or resolver; mail for other domains is refused.
    enabled: bool = True
    # Relative to server.data_dir.
    queue_dir: str = "queue"
    # "host:port" replaces MX routing when set.
    smarthost: str = ""
    smarthost_user: str = ""
    smarthost_password: str = ""
    # "system": route with the [dns] resolver; "host:port" (deprecated) points the
    # router alone at one DNS server, without the AD bit (no DANE).
    resolver: str = "system"
    # SMTP port used for MX hosts (25 in production; tests use others).
    port: int = 25
    tls_policy: Literal["opportunistic", "verify", "none"] = "opportunistic"
    # Per-domain TLS policy overrides: {"example.com" = "verify"}.
    tls_policy_domains: dict[str, str] = field(default_factory=dict)
    retry_initial: float = 300.0
    retry_max: float = 3600.0
    lifetime: float = 5 * 24 * 3600.0
    # Send a delay warning after this many seconds; 0 disables it.
    delay_warning: float = 0.0
    max_concurrency: int = 20
    max_per_domain: int = 5
    connect_timeout: float = 30.0
    # The local address outbound connections leave from (Postfix's smtp_bind_address and
    # smtp_bind_address6); empty: the kernel's choice. Matters on a host with several
    # addresses, where SPF and the PTR record name one of them.
    source_address: str = ""
    source_address6: str = ""
    # Waits for the server, RFC 5321 §4.5.3.2 (seconds): the greeting, each command's
    # reply (MAIL, RCPT, EHLO ...), the 354 to DATA, the transport taking each chunk
    # of the message, and the reply after the final dot or BDAT LAST.
    greeting_timeout: float = 300.0
    command_timeout: float = 300.0
    data_init_timeout: float = 120.0
    data_block_timeout: float = 180.0
    final_timeout: float = 600.0
    # One reply may have at most this many lines and octets.
    reply_max_lines: int = 100
    reply_max_bytes: int = 65536
    # New connections per second to one destination host, after a burst of
    # connect_burst; a destination whose sessions keep failing is held off for
    # min(retry_initial, 60) * 2**(failures-1) seconds, at most hold_off_max.
    connect_rate: float = 2.0
    connect_burst: int = 5
    hold_off_max: float = 3600.0
    # Queue runner scan interval in seconds.
    scan_interval: float = 30.0
    # fsync spool files before SMTP answers 250 (turn off only for benchmarks/tests).
    fsync: bool = True
    # MTA-STS (RFC 8461): fetch and honour recipient domains' policies.
    mta_sts: bool = False
    # DANE (RFC 7672): TLSA records, believed only with the AD bit of the [dns] resolver.
    dane: bool = False
    # For tests: the only CA trusted for MTA-STS (policy host and MX certificates);
    # empty: the system's trust store.
    mta_sts_ca_file: str = ""
    # For tests: the HTTPS port of mta-sts.<domain> (443).
    mta_sts_port: int = 443
    # Seconds a policy fetch may take in all.
    mta_sts_timeout: float = 30.0


@dataclass
class LimitsConfig:
    """Connection rate and exemptions for every listener (mailhost.limits).

    The concurrent limits per kind are smtp/pop3/imap.max_connections(_per_ip);
    submission uses SMTP's.
    """

    # New connections per minute from one client address over all listeners (token
    # bucket refill); 0 disables the rate limit.
    connection_rate: float = 120.0
    # Bucket size: connections a client may open in a burst before the rate applies.
    connection_burst: int = 60
    # Client networks (CIDR) exempt from the per-address count and rate, like Postfix's
    # smtpd_client_event_limit_exceptions; they still count towards max_connections.
    exempt_networks: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # When a listener kind is at max_connections, make room for a new client by closing
    # the session that has been idle longest among those that have not started a mail
    # transaction (SMTP) or logged in (POP3, IMAP), like Postfix under stress.
    evict_idle: bool = True


@dataclass
class MetricsConfig:
    # Endpoint string for the Prometheus endpoint; empty disables it.
    listen: str = ""


@dataclass
class WebConfig:
    """The web UI and REST API (mailhost.web) for a test or development server."""

    # Endpoint string, e.g. "tcp:8025:interface=127.0.0.1"; empty disables it.
    listen: str = ""
    # HTTP basic auth for every request when both are set; otherwise only loopback
    # clients (and Host: names of loopback) are served.
    username: str = ""
    password: str = ""
    # Scripted SMTP/POP3/IMAP faults added and cleared from the page (Mailpit's chaos).
    faults: bool = False


@dataclass
class DNSConfig:
    """The resolver that mail authentication asks (SPF, DKIM, DMARC, DANE)."""

    # Recursive resolvers, "host" or "host:port"; empty: the nameservers of
    # /etc/resolv.conf (read at the first lookup, so an unused resolver never starts).
    nameservers: list[str] = field(default_factory=list)
    # Seconds one lookup may take in all, over every server and the TCP retry.
    timeout: float = 5.0
    # Answers kept (by TTL, NXDOMAIN/NODATA too) before the least recently used goes.
    cache_entries: int = 10000


@dataclass
class PipelineConfig:
    """The message pipeline after DATA (mailhost.pipeline): checks and modifiers."""

    # Stage names in order: spf, dkim, dmarc, arc, auth_results, dkim_sign, arc_seal;
    # empty: none.
    stages: list[str] = field(default_factory=list)
    # The authserv-id of our Authentication-Results fields; empty: server.hostname.
    authserv_id: str = ""
    # On a DMARC fail: "enforce" applies the domain's p= (reject, Junk); "monitor" records.
    dmarc_mode: Literal["enforce", "monitor"] = "enforce"
    # dkim_sign: domain -> selectors ("2026r 2026e"), keys in <data_dir>/dkim/<domain>/.
    dkim_selectors: dict[str, str] = field(default_factory=dict)
    # arc_seal: "<domain>:<selector>" of the RSA key that seals; empty: the first RSA key
    # of dkim_selectors.
    arc_selector: str = ""
    # dmarc: don't enforce a DMARC fail of mail these sealers' passing ARC chain says
    # passed DMARC with them (forwarders you trust); needs "arc" before "dmarc".
    arc_trusted_sealers: list[str] = field(default_factory=list)
    # milter: name -> "inet:11332@127.0.0.1 [default_action=accept] [command_timeout=30] ...".
    milters: dict[str, str] = field(default_factory=dict)
    # What a milter that is down or times out means, unless its own default_action says.
    milter_default_action: Literal["tempfail", "accept"] = "tempfail"


@dataclass
class DNSBLConfig:
    """DNS block- and allowlists asked about SMTP clients (mailhost.abuse.dnsbl)."""

    # "zone[=codes][*weight]", e.g. "zen.example=127.0.0.2-127.0.0.11*2".
    zones: list[str] = field(default_factory=list)
    # DNSWL zones, same form: a listed client skips the DNSBLs and greylisting.
    allow_zones: list[str] = field(default_factory=list)
    # Sum of the weights of listing zones at which a client is refused.
    threshold: int = 1


@dataclass
class GreylistConfig:
    """Greylisting of (client network, sender, recipient) at RCPT (mailhost.abuse.greylist)."""

    enabled: bool = False
    # Seconds a new triplet must wait before a retry passes.
    delay: float = 300.0
    # Seconds an unretried triplet is kept; a passed one, after it was last seen.
    pending_ttl: float = 86400.0
    passed_ttl: float = 36 * 86400.0
    # The sqlite3 database; relative to server.data_dir.
    path: str = "greylist.sqlite"
    # Never greylisted: client networks (CIDR), sender domains, recipients.
    allow_clients: list[str] = field(default_factory=list)
    allow_sender_domains: list[str] = field(default_factory=list)
    allow_recipients: list[str] = field(default_factory=lambda: ["postmaster@", "abuse@"])


@dataclass
class RateLimitConfig:
    """Limits per authenticated user (mailhost.abuse.ratelimit); passwd fields override."""

    # MAIL FROMs per hour (token bucket); 0 = no limit.
    messages_per_hour: int = 0
    # Recipients per message; 0 = only smtp.max_recipients.
    recipients_per_message: int = 0


@dataclass
class CaptureConfig:
    """Capture mode: a development sink that keeps every message and sends none."""

    # True: every recipient of every domain is accepted into its own mailbox (made on
    # first delivery), any AUTH succeeds, nothing is queued, relayed or checked.
    enabled: bool = False


@dataclass
class QueueConfig:
    """Where the outbound queue lives."""

    # "spool": files under outbound.queue_dir; "postgresql": one queue in queue.dsn (or,
    # when that is empty, store.dsn) that every node writes to and any live node
    # delivers from, each message claimed under a lease (docs/scale-out.md).
    backend: Literal["spool", "postgresql"] = "spool"
    dsn: str = ""
    # Seconds a claim lasts without renewal (renewed every third of it): a node killed
    # mid-delivery has its messages delivered by another node this long after.
    lease: float = 60.0
    # Seconds between looks for unclaimed or expired work (and lease renewals).
    poll: float = 1.0


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    pop3: POP3Config = field(default_factory=POP3Config)
    imap: IMAPConfig = field(default_factory=IMAPConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    web: WebConfig = field(default_factory=WebConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    dnsbl: DNSBLConfig = field(default_factory=DNSBLConfig)
    greylist: GreylistConfig = field(default_factory=GreylistConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    # Where the config was read from, for resolving relative paths; not a TOML key.
    source: str = field(default="", metadata={"internal": True})
    # Command-line overrides, re-applied when the file is reloaded; not a TOML key.
    overrides: list[str] = field(default_factory=list, metadata={"internal": True})

    def data_path(self, path: str) -> str:
        """Resolve a data path: absolute stays, relative is under server.data_dir.

        A config from ``load`` has every path absolute already (``resolve_paths``);
        this serves configs built in code, whose relative paths follow the cwd.
        """
        if os.path.isabs(path):
            return path
        return os.path.join(os.path.abspath(self.server.data_dir), path)

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls.cert and self.tls.key)


# Every path-valued key, by what a relative value is relative to. "base": the
# directory of the config file that set it (the working directory for a default with
# no file, or for a command-line override); "data": server.data_dir. A test checks
# that every key named like a path is listed here.
PATH_KEYS: dict[str, Literal["base", "data"]] = {
    "server.data_dir": "base",
    "tls.cert": "base",
    "tls.key": "base",
    "store.path": "data",
    "auth.passwd_file": "data",
    "auth.aliases_file": "data",
    "outbound.queue_dir": "data",
    "outbound.mta_sts_ca_file": "base",
    "greylist.path": "data",
    "imap.urlauth_dir": "data",
}


def resolve_paths(config: Config, base: str, kind: Literal["base", "data"]) -> None:
    """Make the relative values of the path keys of ``kind`` absolute, against ``base``.

    The server, ``mailhost user …`` and ``mailhost queue …`` all get their config
    from ``load``, which calls this, so they find the same files whatever directory
    they were started in. Empty values (no TLS) stay empty.
    """
    for name, of in PATH_KEYS.items():
        if of != kind:
            continue
        sec, _, key = name.partition(".")
        section = getattr(config, sec)
        value = getattr(section, key)
        if value and not os.path.isabs(value):
            setattr(section, key, os.path.normpath(os.path.join(base, value)))


def sections() -> dict[str, type]:
    """Section name → dataclass, in declaration order."""
    hints = typing.get_type_hints(Config)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(Config)
        if not f.metadata.get("internal")
    }


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list of strings"
    if origin is dict:
        return "a table of strings"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against annotation ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad
        return list(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise bad
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(key, arg, value)
            except ConfigError:
                continue
        raise bad
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad


def _parse_scalar(text: str) -> Any:
    """Parse a command-line override value as a TOML value, falling back to a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply(config: Config, data: dict[str, Any], where: str = "") -> Config:
    """Merge a TOML-shaped dict into ``config``, validating every key."""
    secs = sections()
    for sec_name, sec_data in data.items():
        if sec_name not in secs:
            raise ConfigError(f"{where}{sec_name}: unknown section (known: {', '.join(secs)})")
        if not isinstance(sec_data, dict):
            raise ConfigError(f"{where}{sec_name}: expected a [{sec_name}] table")
        section = getattr(config, sec_name)
        hints = typing.get_type_hints(type(section))
        for key, value in sec_data.items():
            if key not in hints:
                raise ConfigError(f"{where}{sec_name}.{key}: unknown key")
            setattr(section, key, _coerce(f"{where}{sec_name}.{key}", hints[key], value))
    return config


def set_option(config: Config, assignment: str) -> None:
    """Apply one ``section.key=value`` override (value in TOML syntax or a bare string)."""
    name, sep, text = assignment.partition("=")
    sec, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise ConfigError(f"{assignment}: expected section.key=value")
    apply(config, {sec: {key: _parse_scalar(text.strip())}})


def load(path: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the TOML file at ``path``, then ``section.key=value`` overrides.

    Relative paths are resolved here, once (``PATH_KEYS``): those from the file (and
    the defaults, when there is a file) against the file's directory, those given on
    the command line against the working directory, and the data files against
    ``server.data_dir``. The overrides are kept with their paths made absolute, so a
    reload from another working directory reads the same files.
    """
    config = Config()
    cwd = os.getcwd()
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        apply(config, data)
        config.source = os.path.abspath(path)
    resolve_paths(config, os.path.dirname(config.source) if config.source else cwd, "base")
    kept = []
    for assignment in overrides:
        set_option(config, assignment)
        name = assignment.partition("=")[0].strip()
        if PATH_KEYS.get(name) == "base":
            sec, _, key = name.partition(".")
            section = getattr(config, sec)
            before = getattr(section, key)
            resolve_paths(config, cwd, "base")
            if getattr(section, key) != before:
                assignment = f"{name}={json.dumps(getattr(section, key))}"
        kept.append(assignment)
    config.overrides = kept
    resolve_paths(config, config.server.data_dir, "data")
    validate(config)
    return config


def validate(config: Config) -> None:
    """Cross-field checks the per-key types cannot express.

    It reads no TLS file: ``mailhost user list`` must work while the certificate is
    missing. The server and ``check-config`` load the certificate themselves
    (``mailhost.tls.server_options``) and say so when it is missing or bad.
    """
    if not config.server.domains:
        raise ConfigError("server.domains: at least one local domain is required")
    if bool(config.tls.cert) != bool(config.tls.key):
        raise ConfigError("tls.cert: tls.cert and tls.key must be set together")
    for sec in ("smtp", "submission", "pop3", "imap"):
        if getattr(config, sec).listen_tls and not config.tls_enabled:
            raise ConfigError(f"{sec}.listen_tls: needs tls.cert and tls.key")
    if config.smtp.min_free_space < 0:
        raise ConfigError("smtp.min_free_space: must be 0 (no check) or a number of bytes")
    if config.smtp.max_message_size < 1024:
        raise ConfigError("smtp.max_message_size: must be at least 1024")
    host = config.outbound.smarthost
    if host and not host.rpartition(":")[2].isdigit():
        raise ConfigError(f"outbound.smarthost: expected host:port, got {host!r}")
    for key, version in (("source_address", 4), ("source_address6", 6)):
        value = getattr(config.outbound, key)
        try:
            if value and ipaddress.ip_address(value).version != version:
                raise ValueError(f"not an IPv{version} address")
        except ValueError:
            raise ConfigError(f"outbound.{key}: expected an IPv{version} address, "
                              f"got {value!r}") from None
    if config.server.workers == 0:
        raise ConfigError('server.workers: must be at least 1 (or "auto")')
    if config.server.workers != 1 and config.store.backend != "maildir":
        raise ConfigError("server.workers: several workers need the maildir store "
                          "(a memory store is private to one process)")
    store_modes(config.store)
    if config.store.backend == "postgresql" and not config.store.dsn:
        raise ConfigError('store.dsn: backend = "postgresql" needs a dsn ("postgresql://…")')
    if config.auth.backend == "postgresql" and not (config.auth.dsn or config.store.dsn):
        raise ConfigError('auth.dsn: backend = "postgresql" needs auth.dsn or store.dsn')
    if config.queue.backend == "postgresql":
        if not (config.queue.dsn or config.store.dsn):
            raise ConfigError('queue.dsn: backend = "postgresql" needs queue.dsn or store.dsn')
        if not config.queue.lease >= 3 * config.queue.poll or config.queue.poll <= 0:
            raise ConfigError("queue.lease: must be at least three times queue.poll (> 0)")
    from mailhost.store.quota import parse_size

    try:
        parse_size(config.store.default_quota)
    except ValueError as e:
        raise ConfigError(f"store.default_quota: {e}") from None


def _octal_mode(key: str, text: str, allowed: int, required: int, what: str) -> int:
    bad = ConfigError(f'{key}: expected an octal mode like "{required:04o}" ({what}), '
                      f"got {text!r}")
    digits = text[2:] if text[:2] in ("0o", "0O") else text
    if not 3 <= len(digits) <= 4 or any(c not in "01234567" for c in digits):
        raise bad
    mode = int(digits, 8)
    if mode & ~allowed or mode & required != required:
        raise bad
    return mode


def store_modes(store: StoreConfig) -> tuple[int, int, int | None]:
    """(file mode, directory mode, gid or None) of ``[store]``, checked; the group is
    resolved here, at load. ConfigError names the key."""
    file_mode = _octal_mode("store.file_mode", store.file_mode, 0o666, 0o600,
                            "read/write bits only, the owner's included")
    dir_mode = _octal_mode("store.dir_mode", store.dir_mode, 0o777, 0o700,
                           "permission bits only, the owner's rwx included; "
                           "setgid comes with store.group")
    group = str(store.group).strip()
    if not group:
        return file_mode, dir_mode, None
    if group.isdigit():
        return file_mode, dir_mode, int(group)
    import grp

    try:
        return file_mode, dir_mode, grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"store.group: no such group: {group!r}") from None


def as_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The effective settings as a TOML-shaped dict (for check-config)."""
    return {name: dataclasses.asdict(getattr(config, name)) for name in sections()}

