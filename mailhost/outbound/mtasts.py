"""MTA-STS (RFC 8461): the policy of a recipient domain, fetched over HTTPS and cached.

``MTASTS.policy(domain)`` answers with the ``Policy`` in force, or None:

1. the TXT record ``_mta-sts.<domain>`` (``v=STSv1; id=…``) is asked through the
   host's ``IDNSLookup``;
2. a cached policy (memory, then ``<data_dir>/mta-sts/<domain>.json``) is used while
   its ``max_age`` lasts and the TXT id is unchanged; when the id changes, or no
   policy is cached, ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` is fetched:
   the certificate verified for ``mta-sts.<domain>`` (WebPKI, or only the CA of
   ``outbound.mta_sts_ca_file`` for tests), redirects not followed (§3.3), at most
   64 KiB, within ``outbound.mta_sts_timeout`` seconds;
3. a failed fetch or an invalid policy keeps the cached one (§5.1) and is reported
   (``sts-policy-fetch-error``, ``sts-policy-invalid``, ``sts-webpki-invalid``); with
   nothing cached the domain has no policy. A domain whose TXT record is gone keeps
   its cached policy until it expires (§3.1 lets the record be removed).

The policy host is found through the same ``IDNSLookup`` (A, then AAAA) and
connected to on ``outbound.mta_sts_port`` (443; tests point both at loopback), so
the fetch needs no system resolver. ``twisted.web.client.Agent`` does the HTTP: it
follows no redirects by itself, and its endpoint is ours.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, protocol, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.logger import Logger
from twisted.web.client import Agent, ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from mailhost.dns.interfaces import DNSTemporaryError, IDNSLookup
from mailhost.outbound.dane import name_matches
from mailhost.outbound.tlsrpt import (
    STS_POLICY_FETCH_ERROR,
    STS_POLICY_INVALID,
    STS_WEBPKI_INVALID,
    TLSProblem,
)

log = Logger()

MAX_POLICY_SIZE = 64 * 1024
#: RFC 8461 §3.2: max_age is at most 31557600 seconds (a year).
MAX_AGE_LIMIT = 31557600
MODES = ("enforce", "testing", "none")


class PolicyError(Exception):
    """A policy could not be had; ``result_type`` says why in RFC 8460's words."""

    def __init__(self, result_type: str, text: str) -> None:
        super().__init__(text)
        self.result_type = result_type


@dataclass(frozen=True)
class Policy:
    """One domain's MTA-STS policy as fetched (``fetched``: epoch seconds)."""

    domain: str
    id: str
    mode: str
    mx: tuple[str, ...]
    max_age: int
    fetched: float
    text: str = ""

    def expires(self) -> float:
        return self.fetched + self.max_age

    def allows(self, mx_host: str) -> bool:
        return any(name_matches(p, mx_host) for p in self.mx)

    def policy_strings(self) -> list[str]:
        """The policy's lines for TLS-RPT's ``policy-string``."""
        return [line.strip() for line in self.text.splitlines() if line.strip()]

    def as_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "id": self.id, "mode": self.mode, "mx": list(self.mx),
                "max_age": self.max_age, "fetched": self.fetched, "text": self.text}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Policy:
        return cls(str(data["domain"]), str(data["id"]), str(data["mode"]),
                   tuple(str(m) for m in data["mx"]), int(data["max_age"]),
                   float(data["fetched"]), str(data.get("text", "")))


_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


def parse_txt(records: tuple[Any, ...]) -> str | None:
    """The ``id`` of the one ``v=STSv1`` TXT record, or None (none, several, bad)."""
    found = [r for r in records if bytes(r).startswith(b"v=STSv1")]
    if len(found) != 1:
        return None
    fields = {}
    for part in bytes(found[0]).decode("ascii", "replace").split(";"):
        key, _, value = part.strip().partition("=")
        if key:
            fields[key.strip()] = value.strip()
    if fields.get("v") != "STSv1" or not _ID.match(fields.get("id", "")):
        return None
    return fields["id"]


def parse_policy(domain: str, text: str, policy_id: str, fetched: float) -> Policy:
    """RFC 8461 §3.2 policy text → Policy; PolicyError(sts-policy-invalid) if unusable."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(STS_POLICY_INVALID, f"policy line without a colon: {line[:60]!r}")
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value.lower().rstrip("."))
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise PolicyError(STS_POLICY_INVALID, "policy version is not STSv1")
    mode = fields.get("mode", "")
    if mode not in MODES:
        raise PolicyError(STS_POLICY_INVALID, f"policy mode {mode!r} is not enforce, testing or none")
    age = fields.get("max_age", "")
    if not age.isdigit() or len(age) > 10:
        raise PolicyError(STS_POLICY_INVALID, f"policy max_age {age!r} is not a number")
    if mode != "none" and not mx:
        raise PolicyError(STS_POLICY_INVALID, "policy names no mx")
    return Policy(domain, policy_id, mode, tuple(mx), min(int(age), MAX_AGE_LIMIT), fetched, text)


class _BoundedBody(protocol.Protocol):
    """Collects a response body of at most ``limit`` octets."""

    def __init__(self, limit: int, done: defer.Deferred[bytes]) -> None:
        self.limit = limit
        self.done = done
        self.data = bytearray()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data
        if len(self.data) > self.limit and not self.done.called:
            self.done.errback(PolicyError(STS_POLICY_INVALID,
                                          f"policy larger than {self.limit} octets"))
            transport: Any = self.transport  # the response body's IPushProducer
            transport.stopProducing()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if self.done.called:
            return
        if reason is None or reason.check(ResponseDone):
            self.done.callback(bytes(self.data))
        else:
            self.done.errback(PolicyError(STS_POLICY_FETCH_ERROR,
                                          f"policy body cut off: {reason.getErrorMessage()}"))


@implementer(IAgentEndpointFactory)
class _PinnedEndpoints:
    """Every URI to one already-resolved address and port, over TLS for ``host``."""

    def __init__(self, reactor: Any, address: str, port: int, tls: Any, timeout: float) -> None:
        self.reactor = reactor
        self.address = address
        self.port = port
        self.tls = tls
        self.timeout = timeout

    def endpointForURI(self, uri: Any) -> Any:  # noqa: N802
        cls = TCP6ClientEndpoint if ":" in self.address else TCP4ClientEndpoint
        tcp = cls(self.reactor, self.address, self.port, timeout=max(int(self.timeout), 1))
        return wrapClientTLS(self.tls, tcp)


class MTASTS:
    """Policies of recipient domains; see the module docstring."""

    def __init__(self, lookup: IDNSLookup, cache_dir: str, reactor: Any, port: int = 443,
                 ca_file: str = "", timeout: float = 30.0) -> None:
        self.lookup = lookup
        self.cache_dir = cache_dir
        self.reactor = reactor
        self.port = port
        self.ca_file = ca_file
        self.timeout = timeout
        self.cache: dict[str, Policy] = {}
        self._trust: Any = None
        self.fetches = 0

    async def policy(self, domain: str) -> tuple[Policy | None, TLSProblem | None]:
        """The policy in force for ``domain`` and the problem met on the way, if any."""
        domain = domain.lower().rstrip(".")
        now = self.reactor.seconds()
        cached = self.cache.get(domain) or await self._load(domain)
        if cached is not None and cached.expires() <= now:
            cached = None
        try:
            answer = await self.lookup.lookup(f"_mta-sts.{domain}", "TXT")
            txt_id = parse_txt(answer.records)
        except (DNSTemporaryError, ValueError):
            txt_id = None
        if txt_id is None or (cached is not None and cached.id == txt_id):
            return cached, None
        try:
            fresh = await self._fetch(domain, txt_id)
        except PolicyError as e:
            log.info("outbound: MTA-STS policy of {domain}: {error}", domain=domain, error=str(e))
            return cached, TLSProblem(e.result_type, str(e))
        self.cache[domain] = fresh
        await self._save(fresh)
        return fresh, None

    # The disk cache.

    def _path(self, domain: str) -> str:
        safe = re.sub(r"[^a-z0-9.-]", "_", domain)
        return os.path.join(self.cache_dir, safe + ".json")

    async def _load(self, domain: str) -> Policy | None:
        if not self.cache_dir:
            return None
        data = await threads.deferToThread(_read_json, self._path(domain))
        if data is None:
            return None
        try:
            policy = Policy.from_json(data)
        except (KeyError, TypeError, ValueError):
            return None
        if policy.domain != domain:
            return None
        self.cache[domain] = policy
        return policy

    async def _save(self, policy: Policy) -> None:
        if self.cache_dir:
            await threads.deferToThread(_write_json, self.cache_dir, self._path(policy.domain),
                                        policy.as_json())

    # The fetch.

    async def _address(self, host: str) -> str:
        for rtype in ("A", "AAAA"):
            try:
                answer = await self.lookup.lookup(host, rtype)
            except (DNSTemporaryError, ValueError) as e:
                raise PolicyError(STS_POLICY_FETCH_ERROR, f"cannot resolve {host}: {e}") from None
            if answer.records:
                return str(answer.records[0])
        raise PolicyError(STS_POLICY_FETCH_ERROR, f"{host} has no address")

    async def _trust_root(self) -> Any:
        if not self.ca_file:
            from twisted.internet import ssl

            return ssl.platformTrust()
        if self._trust is None:
            from twisted.internet import ssl

            pem = await threads.deferToThread(_read_bytes, self.ca_file)
            blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem,
                                re.S)
            self._trust = ssl.trustRootFromCertificates(
                [ssl.Certificate.loadPEM(b) for b in blocks])
        return self._trust

    async def _fetch(self, domain: str, policy_id: str) -> Policy:
        from twisted.internet import ssl

        host = f"mta-sts.{domain}"
        self.fetches += 1
        address = await self._address(host)
        tls = ssl.optionsForClientTLS(host, trustRoot=await self._trust_root())
        agent = Agent.usingEndpointFactory(
            self.reactor, _PinnedEndpoints(self.reactor, address, self.port, tls, self.timeout))
        url = f"https://{host}/.well-known/mta-sts.txt".encode("ascii")
        d = agent.request(b"GET", url, Headers({b"User-Agent": [b"mailhost"]}))
        d.addTimeout(self.timeout, self.reactor)
        try:
            response = await d
        except defer.TimeoutError:
            raise PolicyError(STS_POLICY_FETCH_ERROR,
                              f"no answer from {host} within {self.timeout:g} s") from None
        except Exception as e:
            raise _classify(host, e) from None
        if response.code != 200:
            response.deliverBody(protocol.Protocol())  # discard it
            raise PolicyError(STS_POLICY_FETCH_ERROR,
                              f"{host} answered HTTP {response.code} (redirects are not followed)")
        ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if not ctype.lower().startswith(b"text/plain"):
            response.deliverBody(protocol.Protocol())
            raise PolicyError(STS_POLICY_INVALID,
                              f"{host} sent content type {ctype.decode('ascii', 'replace')!r}")
        body: defer.Deferred[bytes] = defer.Deferred()
        response.deliverBody(_BoundedBody(MAX_POLICY_SIZE, body))
        body.addTimeout(self.timeout, self.reactor)
        try:
            data = await body
        except defer.TimeoutError:
            raise PolicyError(STS_POLICY_FETCH_ERROR, f"{host} sent the policy too slowly") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError(STS_POLICY_INVALID, "policy is not UTF-8") from None
        return parse_policy(domain, text, policy_id, self.reactor.seconds())


def _classify(host: str, e: Exception) -> PolicyError:
    """A failed HTTPS request: a certificate problem (``sts-webpki-invalid``) or any
    other fetch error. Agent wraps what went wrong in ``reasons`` (Failures)."""
    reasons: list[Any] = []
    if isinstance(e, (ResponseFailed, ResponseNeverReceived)):
        reasons = [r.value for r in e.reasons]
    for value in reasons:
        if isinstance(value, SSL.Error) and "certificate" in str(value).lower():
            return PolicyError(STS_WEBPKI_INVALID, f"certificate of {host} not valid: {value}"[:300])
    text = " ".join(str(reasons[0] if reasons else e).split()) or type(e).__name__
    return PolicyError(STS_POLICY_FETCH_ERROR, f"fetching from {host} failed: {text}"[:300])


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(directory: str, path: str, data: dict[str, Any]) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
