"""Outbound transport security: which TLS each MX host gets (DANE, MTA-STS or neither).

For a recipient domain, ``TransportSecurity.for_domain`` asks MTA-STS for the
domain's policy once per session; ``for_hop`` then decides per MX host:

1. **DANE** (RFC 7672), when ``outbound.dane`` is on and the MX answer and the host's
   addresses came with the AD bit (the configured resolver validated them; its AD is
   believed, as Postfix's ``smtp_dns_support_level = dnssec``): the TLSA RRset at
   ``_25._tcp.<mx>`` (the port in use), also only if authenticated.
   - usable records: STARTTLS is required and the chain must match (``dane.py``), else
     ``451 4.7.5`` and nothing is sent;
   - only unusable records: STARTTLS required, no authentication (§2.2), reported as
     ``tlsa-invalid``;
   - a TLSA lookup that fails (SERVFAIL, timeout) in a signed zone: this host is
     not used (``dnssec-invalid``); an unsigned answer or none: on to MTA-STS.
   DANE wins over MTA-STS (RFC 8461 §2).
2. **MTA-STS** (``mtasts.py``): in ``enforce`` mode an MX not named by the policy is
   skipped, and the others need STARTTLS and a certificate valid for the MX name
   under WebPKI (``451 4.7.5`` otherwise, never a plaintext retry); in ``testing``
   mode the same checks run, failures are only reported, and mail goes as usual.
3. Otherwise the configured ``tls_policy`` applies unchanged.

Certificates are checked after the handshake, before anything but EHLO has been
said: the TLS context verifies nothing itself and keeps the OpenSSL connection, so
the chain the server sent can be read (``ChainCollector``), and the check can name
the RFC 8460 result type (expired, host mismatch, untrusted) instead of a bare
handshake failure. Every decision is reported to ``TLSReporter``.
"""

from __future__ import annotations

import datetime
import re
import ssl as stdlib_ssl
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from OpenSSL import SSL
from twisted.internet import threads
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from mailhost.dns.interfaces import DNSTemporaryError, IDNSLookup
from mailhost.outbound import dane, tlsrpt
from mailhost.outbound.mtasts import MTASTS, Policy
from mailhost.outbound.routing import Hop, Route, is_ip
from mailhost.outbound.tlsrpt import TLSProblem, TLSRecord, TLSReporter

NO_POLICY = "no-policy-found"


@implementer(IOpenSSLClientConnectionCreator)
class ChainCollector:
    """Implements: IOpenSSLClientConnectionCreator. A TLS client connection that
    verifies nothing itself (the caller checks the chain) and keeps the connection,
    so the certificates the server sent can be read after the handshake."""

    def __init__(self, context: SSL.Context, host: str) -> None:
        self.context = context
        self.host = host
        self.connection: SSL.Connection | None = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802,N803
        conn = SSL.Connection(self.context, None)
        conn.set_app_data(tlsProtocol)
        if not is_ip(self.host):
            conn.set_tlsext_host_name(self.host.encode("idna"))
        self.connection = conn
        return conn

    def chain(self) -> list[x509.Certificate]:
        if self.connection is None:
            return []
        return list(self.connection.get_peer_cert_chain(as_cryptography=True) or [])


class TLSVerifier:
    """Checks the chain a server sent; ``enforce``: a problem stops the session."""

    def __init__(self, collector: ChainCollector, enforce: bool) -> None:
        self.collector = collector
        self.enforce = enforce

    def check(self) -> TLSProblem | None:
        raise NotImplementedError


class DANEVerifier(TLSVerifier):
    def __init__(self, collector: ChainCollector, records: list[dane.TLSARecord],
                 host: str) -> None:
        super().__init__(collector, enforce=True)
        self.records = records
        self.host = host

    def check(self) -> TLSProblem | None:
        if not self.records:
            return None  # unusable TLSA: encrypted, not authenticated (RFC 7672 §2.2)
        result = dane.check_chain(self.collector.chain(), self.records, self.host)
        return None if result.ok else TLSProblem(result.result_type, result.detail)


class WebPKIVerifier(TLSVerifier):
    def __init__(self, collector: ChainCollector, host: str, store: Store, enforce: bool) -> None:
        super().__init__(collector, enforce)
        self.host = host
        self.store = store

    def check(self) -> TLSProblem | None:
        return check_webpki(self.collector.chain(), self.host, self.store)


def check_webpki(chain: list[x509.Certificate], host: str, store: Store,
                 now: datetime.datetime | None = None) -> TLSProblem | None:
    """WebPKI validation of ``chain`` (leaf first) for ``host``, with RFC 8460's words."""
    if not chain:
        return TLSProblem(tlsrpt.VALIDATION_FAILURE, f"{host} sent no certificate")
    now = now or datetime.datetime.now(datetime.UTC)
    leaf = chain[0]
    dated = dane.check_dates(leaf, now)
    if dated:
        return TLSProblem(tlsrpt.CERTIFICATE_EXPIRED, f"{host}: {dated}")
    names = dane.names_of(leaf)
    if not any(dane.name_matches(n, host) for n in names):
        return TLSProblem(tlsrpt.CERTIFICATE_HOST_MISMATCH,
                          f"{host}: certificate is for {', '.join(names) or 'no name'}")
    try:
        verifier = PolicyBuilder().store(store).time(now).build_server_verifier(
            x509.DNSName(host))
        verifier.verify(leaf, chain[1:])
    except VerificationError as e:
        return TLSProblem(tlsrpt.CERTIFICATE_NOT_TRUSTED, f"{host}: {e}"[:300])
    except ValueError as e:
        return TLSProblem(tlsrpt.VALIDATION_FAILURE, f"{host}: {e}"[:300])
    return None


@dataclass
class DomainPlan:
    """What holds for one recipient domain during one session."""

    domain: str
    route: Route
    sts: Policy | None = None


@dataclass
class HopPlan:
    """How to speak TLS to one MX host."""

    policy_type: str  # "tlsa", "sts" or NO_POLICY
    tls: str = "opportunistic"  # "verify": STARTTLS required
    enforce: bool = False
    # Not to be connected to: the reason, as a 4.7.5 deferral.
    skip: TLSProblem | None = None
    records: list[dane.TLSARecord] = field(default_factory=list)
    policy_strings: list[str] = field(default_factory=list)


class TransportSecurity:
    """DANE and MTA-STS decisions and their reports; see the module docstring."""

    def __init__(self, lookup: IDNSLookup, reporter: TLSReporter, *, dane_on: bool,
                 mtasts: MTASTS | None, ca_file: str = "") -> None:
        self.lookup = lookup
        self.reporter = reporter
        self.dane_on = dane_on
        self.mtasts = mtasts
        self.ca_file = ca_file
        self._context: SSL.Context | None = None
        self._store: Store | None = None

    async def for_domain(self, domain: str, route: Route) -> DomainPlan:
        plan = DomainPlan(domain, route)
        if self.mtasts is not None and not route.smarthost:
            plan.sts, problem = await self.mtasts.policy(domain)
            if problem is not None:
                self.reporter.record(TLSRecord(domain, "sts", problem.result_type,
                                               detail=problem.detail))
            if plan.sts is not None and plan.sts.mode != "none":
                await self._webpki_store()
        return plan

    async def for_hop(self, plan: DomainPlan, hop: Hop) -> HopPlan:
        domain = plan.domain
        if (self.dane_on and not plan.route.smarthost and plan.route.mx_secure and hop.secure
                and not is_ip(hop.name)):
            name = f"_{hop.port}._tcp.{hop.name}"
            try:
                answer = await self.lookup.lookup(name, "TLSA")
            except (DNSTemporaryError, ValueError) as e:
                problem = TLSProblem(tlsrpt.DNSSEC_INVALID, f"TLSA lookup of {name} failed: {e}")
                self.reporter.record(TLSRecord(domain, "tlsa", problem.result_type, mx=hop.name,
                                               detail=problem.detail))
                return HopPlan("tlsa", skip=problem)
            if answer.authenticated and answer.records:
                records = [tuple(r) for r in answer.records]
                strings = [f"{u} {s} {m} {bytes(d).hex()}" for u, s, m, d in records]
                good = dane.usable(records)  # type: ignore[arg-type]
                if not good:
                    self.reporter.record(TLSRecord(
                        domain, "tlsa", tlsrpt.TLSA_INVALID, mx=hop.name, policy_string=strings,
                        detail=f"no usable TLSA record at {name}: TLS without authentication"))
                return HopPlan("tlsa", tls="verify", enforce=True, records=good,
                               policy_strings=strings)
        sts = plan.sts
        if sts is not None and sts.mode in ("enforce", "testing"):
            enforce = sts.mode == "enforce"
            if not sts.allows(hop.name):
                problem = TLSProblem(tlsrpt.VALIDATION_FAILURE,
                                     f"MX {hop.name} is not allowed by the MTA-STS policy of "
                                     f"{domain} ({' '.join(sts.mx)})")
                self.reporter.record(TLSRecord(domain, "sts", problem.result_type, mx=hop.name,
                                               policy_string=sts.policy_strings(),
                                               detail=problem.detail))
                if enforce:
                    return HopPlan("sts", skip=problem, policy_strings=sts.policy_strings())
            return HopPlan("sts", tls="verify" if enforce else "opportunistic", enforce=enforce,
                           policy_strings=sts.policy_strings())
        return HopPlan(NO_POLICY)

    def verifier(self, hop_plan: HopPlan, host: str) -> tuple[ChainCollector, TLSVerifier] | None:
        """The TLS client connection creator and its check for a session to ``host``."""
        if hop_plan.policy_type == NO_POLICY:
            return None
        collector = ChainCollector(self._tls_context(), host)
        if hop_plan.policy_type == "tlsa":
            return collector, DANEVerifier(collector, hop_plan.records, host)
        assert self._store is not None  # loaded by for_domain
        return collector, WebPKIVerifier(collector, host, self._store, hop_plan.enforce)

    def report(self, plan: DomainPlan, hop_plan: HopPlan, hop: Hop, address: str,
               result: Any) -> None:
        """One session's TLS outcome (a ``SessionResult``)."""
        problem: TLSProblem | None = result.tls_problem
        if problem is None and result.tls_failed and hop_plan.policy_type != NO_POLICY:
            problem = TLSProblem(tlsrpt.VALIDATION_FAILURE, result.error or "TLS handshake failed")
        if problem is not None:
            outcome, detail = problem.result_type, problem.detail
        elif result.tls:
            outcome, detail = tlsrpt.SUCCESS, ""
        else:
            return
        self.reporter.record(TLSRecord(plan.domain, hop_plan.policy_type, outcome, mx=hop.name,
                                       address=address, detail=detail,
                                       policy_string=hop_plan.policy_strings))

    def _tls_context(self) -> SSL.Context:
        if self._context is None:
            from twisted.internet import ssl

            self._context = ssl.CertificateOptions(
                raiseMinimumTo=ssl.TLSVersion.TLSv1_2).getContext()
        return self._context

    async def _webpki_store(self) -> Store:
        if self._store is None:
            self._store = await threads.deferToThread(load_store, self.ca_file)
        return self._store


def load_store(ca_file: str = "") -> Store:
    """Trust anchors: those of ``ca_file``, or the system's bundle."""
    path = ca_file or stdlib_ssl.get_default_verify_paths().cafile or \
        "/etc/ssl/certs/ca-certificates.crt"
    with open(path, "rb") as f:
        pem = f.read()
    certs = []
    for block in re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S):
        try:
            certs.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            continue  # a root cryptography cannot parse is no anchor of ours
    return Store(certs)
