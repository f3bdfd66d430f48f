"""TLS results of outbound sessions in the shape of TLS-RPT (RFC 8460).

Every outbound session that reaches a TLS decision is one record: the recipient
domain, the policy that applied (``sts``, ``tlsa`` or ``no-policy-found``), the MX
and address, and ``success`` or an RFC 8460 §4.3 result type. Failures are logged
as the structured event ``tls_failure`` and counted by the observers (the host's
metrics); every record is appended, one JSON object a line, to
``<data_dir>/tls-reports/YYYY-MM-DD.jsonl`` (UTC day) from a thread, so that
``mailhost tls-report --day YYYY-MM-DD`` can print the day's report in RFC 8460
§4.4's JSON without the server running. Sending the reports to the ``rua`` of
``_smtp._tls`` is not done here.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger

log = Logger()

# RFC 8460 §4.3 result types.
STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
CERTIFICATE_EXPIRED = "certificate-expired"
CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
VALIDATION_FAILURE = "validation-failure"
TLSA_INVALID = "tlsa-invalid"
DNSSEC_INVALID = "dnssec-invalid"
DANE_REQUIRED = "dane-required"
STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
STS_POLICY_INVALID = "sts-policy-invalid"
STS_WEBPKI_INVALID = "sts-webpki-invalid"
RESULT_TYPES = (STARTTLS_NOT_SUPPORTED, CERTIFICATE_HOST_MISMATCH, CERTIFICATE_EXPIRED,
                CERTIFICATE_NOT_TRUSTED, VALIDATION_FAILURE, TLSA_INVALID, DNSSEC_INVALID,
                DANE_REQUIRED, STS_POLICY_FETCH_ERROR, STS_POLICY_INVALID, STS_WEBPKI_INVALID)

SUCCESS = "success"


@dataclass(frozen=True)
class TLSProblem:
    """One TLS failure: its RFC 8460 result type and a line for the log."""

    result_type: str
    detail: str


@dataclass
class TLSRecord:
    """One outbound session's TLS result (or a policy failure before any session)."""

    domain: str
    policy_type: str  # sts / tlsa / no-policy-found
    result: str  # SUCCESS or a result type
    mx: str = ""
    address: str = ""
    detail: str = ""
    policy_string: list[str] = field(default_factory=list)
    when: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"t": self.when, "domain": self.domain, "policy_type": self.policy_type,
                "policy_string": self.policy_string, "result": self.result, "mx": self.mx,
                "address": self.address, "detail": self.detail}


def day_of(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%d")


class TLSReporter:
    """Logs, counts and stores ``TLSRecord``s; ``observers`` are called with each one."""

    def __init__(self, directory: str, clock: Callable[[], float]) -> None:
        self.directory = directory
        self.clock = clock
        self.observers: list[Callable[[TLSRecord], None]] = []
        self._lock = defer.DeferredLock()
        self._writes: set[defer.Deferred[None]] = set()

    def record(self, rec: TLSRecord) -> None:
        rec.when = rec.when or self.clock()
        if rec.result != SUCCESS:
            log.warn(
                "outbound TLS failure domain={domain} policy={policy_type} "
                "result={result_type} mx={mx} {detail}",
                domain=rec.domain, policy_type=rec.policy_type, result_type=rec.result,
                mx=rec.mx, address=rec.address, detail=rec.detail, event="tls_failure",
            )
        for observe in self.observers:
            observe(rec)
        if self.directory:
            d = defer.Deferred.fromCoroutine(self._append(rec))
            self._writes.add(d)
            d.addErrback(lambda f: log.failure("outbound: writing a TLS report record", f))
            d.addBoth(lambda _: self._writes.discard(d))

    async def _append(self, rec: TLSRecord) -> None:
        line = json.dumps(rec.as_json(), sort_keys=True) + "\n"
        path = os.path.join(self.directory, day_of(rec.when) + ".jsonl")
        await self._lock.run(threads.deferToThread, _append_line, self.directory, path, line)

    def drain(self) -> defer.Deferred[Any]:
        """Fires when the records written so far are on disk."""
        return defer.DeferredList(list(self._writes), consumeErrors=True)


def _append_line(directory: str, path: str, line: str) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def report(directory: str, day: str, organization: str, contact: str) -> dict[str, Any]:
    """The RFC 8460 §4.4 report of ``day`` (``YYYY-MM-DD``) from the stored records."""
    policies: dict[tuple[str, str, tuple[str, ...]], dict[str, Any]] = {}
    path = os.path.join(directory, day + ".jsonl")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        key = (r["domain"], r["policy_type"], tuple(r.get("policy_string") or ()))
        p = policies.setdefault(key, {"ok": 0, "failed": 0, "mx": set(), "details": {}})
        if r.get("mx"):
            p["mx"].add(r["mx"])
        if r["result"] == SUCCESS:
            p["ok"] += 1
            continue
        p["failed"] += 1
        dkey = (r["result"], r.get("mx", ""), r.get("address", ""), r.get("detail", ""))
        p["details"][dkey] = p["details"].get(dkey, 0) + 1
    out = []
    for (domain, ptype, pstring), p in sorted(policies.items()):
        policy: dict[str, Any] = {"policy-type": ptype, "policy-string": list(pstring),
                                  "policy-domain": domain}
        if p["mx"]:
            policy["mx-host"] = sorted(p["mx"])
        entry: dict[str, Any] = {
            "policy": policy,
            "summary": {"total-successful-session-count": p["ok"],
                        "total-failure-session-count": p["failed"]},
        }
        if p["details"]:
            entry["failure-details"] = [
                {"result-type": rt, "receiving-mx-hostname": mx, "receiving-ip": ip,
                 "failed-session-count": n, "failure-reason-code": detail[:200]}
                for (rt, mx, ip, detail), n in sorted(p["details"].items())
            ]
        out.append(entry)
    return {
        "organization-name": organization,
        "date-range": {"start-datetime": f"{day}T00:00:00Z", "end-datetime": f"{day}T23:59:59Z"},
        "contact-info": contact,
        "report-id": f"{day}_{organization}",
        "policies": out,
    }
