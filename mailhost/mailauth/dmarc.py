"""DMARC (RFC 7489): does the From: domain's owner vouch for this message?

``DMARCChecker.check(from_domain, spf, dkim)`` finds the policy (``_dmarc.<From
domain>``, else ``_dmarc.<organizational domain>``, §6.6.3) and passes the message
when SPF passed for an aligned MAIL FROM domain or any DKIM signature passed for an
aligned d= (§3.1, ``aspf``/``adkim``: relaxed by default, strict on request).

The outcome carries the result for Authentication-Results (``pass``, ``fail``,
``none`` when there is no policy, ``temperror`` when DNS failed, ``permerror`` when
the From: field names no single domain) and the disposition the policy asks for:
``p`` (or ``sp`` for a subdomain of the policy's domain), after ``pct`` sampling
(§6.6.4: an unsampled message gets the next milder policy). Enforcing it (550,
Junk, monitor mode, never against our own submission) is the pipeline's business.
"""

from __future__ import annotations

import email.utils
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailhost.dns.interfaces import DNSNameInvalid, DNSTemporaryError, IDNSLookup
from mailhost.mailauth.dkim import DKIMResult
from mailhost.mailauth.orgdomain import aligned, organizational_domain
from mailhost.mailauth.spf import SPFResult
from mailhost.mailauth.textcache import ParsedByText

POLICIES = ("none", "quarantine", "reject")


class NoPolicy(ValueError):
    """The TXT record is not a usable DMARC record."""


@dataclass(frozen=True)
class DMARCRecord:
    policy: str
    subdomain_policy: str
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


@dataclass(frozen=True)
class DMARCResult:
    result: str  # pass, fail, none, temperror, permerror
    from_domain: str
    policy: str = "none"  # what the record asks for this message (p or sp)
    disposition: str = "none"  # after pct sampling; what to apply on fail
    record_domain: str = ""  # where the record was found
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""


def parse_record(text: str) -> DMARCRecord:
    """A ``v=DMARC1`` record (§6.3, §6.6.3 for a missing or bad p=); NoPolicy if unusable."""
    tags: dict[str, str] = {}
    parts = [p.strip() for p in text.split(";")]
    if not parts or re.sub(r"\s+", "", parts[0]) != "v=DMARC1":
        raise NoPolicy("does not start with v=DMARC1")
    for part in parts[1:]:
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            continue  # a malformed tag is ignored like an unknown one
        tags.setdefault(name.strip().lower(), value.strip())
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        # §6.6.3: no valid p= but a valid rua= means p=none; otherwise no policy.
        if tags.get("rua", "").lower().startswith("mailto:"):
            p = "none"
        else:
            raise NoPolicy(f"bad p={tags.get('p', '')!r}")
    sp = tags.get("sp", "").lower()
    sp = sp if sp in POLICIES else p
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    return DMARCRecord(p, sp, adkim if adkim in ("r", "s") else "r",
                       aspf if aspf in ("r", "s") else "r", min(max(pct, 0), 100))


_FROM_FIELD = re.compile(r"(?im)^from:((?:.*)(?:\r?\n[ \t].*)*)")
#: A From value that is one address and nothing getaddresses could read otherwise:
#: ``a@b``, or ``Plain Words <a@b>`` (no quotes, comments, commas or groups).
_ADDR = r"[A-Za-z0-9._%+=&'/!#$*?^`{|}~-]+@[A-Za-z0-9.-]+"
_SIMPLE_FROM = re.compile(rf"\s*(?:({_ADDR})|[A-Za-z0-9 .'_-]*<({_ADDR})>)\s*$")


def from_domain(header_block: bytes) -> str | None:
    """The one domain of the message's From: field, or None when there is not
    exactly one From: with exactly one address that has a domain (§6.6.1)."""
    text = header_block.decode("utf-8", "replace")
    fields = _FROM_FIELD.findall(text)
    if len(fields) != 1:
        return None
    value = fields[0].replace("\r", "").replace("\n", "")
    simple = _SIMPLE_FROM.match(value)
    if simple is not None:  # one plain address: what getaddresses would find, cheaper
        found = [simple.group(1) or simple.group(2)]
    else:
        found = [a for _n, a in email.utils.getaddresses([value]) if a]
    if len(found) != 1:
        return None
    _local, at, domain = found[0].rpartition("@")
    domain = domain.strip().rstrip(".").lower()
    if not at or not domain or not re.fullmatch(r"[a-z0-9._-]+", domain) or ".." in domain:
        return None
    return domain


_MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


class DMARCChecker:
    """Evaluates DMARC with an injected ``IDNSLookup``."""

    def __init__(self, lookup: IDNSLookup, rng: Callable[[], float] = random.random) -> None:
        self.lookup = lookup
        self.rng = rng
        self._records: ParsedByText[str, DMARCRecord] = ParsedByText()

    def parsed(self, text: str) -> DMARCRecord:
        """``parse_record(text)``, parsed once; NoPolicy is not kept."""
        return self._records.get(text, lambda: parse_record(text))

    async def find_record(self, domain: str) -> tuple[DMARCRecord, str] | None:
        """(record, where found) by §6.6.3; DNSTemporaryError propagates."""
        candidates = [domain]
        org = organizational_domain(domain)
        if org != domain:
            candidates.append(org)
        for where in candidates:
            try:
                answer = await self.lookup.lookup(f"_dmarc.{where}", "TXT")
            except DNSNameInvalid:
                continue
            texts = [r.decode("utf-8", "replace") for r in answer.records]
            records = [t for t in texts if re.match(r"^v\s*=\s*DMARC1\s*(;|$)", t)]
            if len(records) != 1:
                continue  # none, or several: no policy here (§6.6.3)
            try:
                return self.parsed(records[0]), where
            except NoPolicy:
                continue
        return None

    async def check(self, header_from: str | None, spf: SPFResult | None,
                    dkim: Sequence[DKIMResult]) -> DMARCResult:
        """The DMARC verdict for a message whose From: domain is ``header_from``
        (None: not exactly one; see ``from_domain``)."""
        if header_from is None:
            return DMARCResult("permerror", "", reason="From: names no single domain")
        try:
            found = await self.find_record(header_from)
        except DNSTemporaryError as e:
            return DMARCResult("temperror", header_from, reason=str(e))
        if found is None:
            return DMARCResult("none", header_from, reason="no DMARC record")
        record, where = found
        policy = record.subdomain_policy if where != header_from else record.policy
        spf_ok = bool(spf and spf.result == "pass" and spf.identity == "mailfrom"
                      and aligned(spf.domain, header_from, record.aspf))
        dkim_ok = any(r.result == "pass" and aligned(r.domain, header_from, record.adkim)
                      for r in dkim)
        if spf_ok or dkim_ok:
            return DMARCResult("pass", header_from, policy, "none", where, spf_ok, dkim_ok)
        disposition = policy
        if record.pct < 100 and self.rng() * 100 >= record.pct:
            disposition = _MILDER[policy]
        return DMARCResult("fail", header_from, policy, disposition, where, False, False,
                           "no aligned SPF or DKIM pass")
