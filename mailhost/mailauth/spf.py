"""SPF (RFC 7208): is this client allowed to send for the MAIL FROM or HELO domain?

Why our own evaluator and not pyspf: pyspf asks DNS itself, synchronously, through
a module-global function (``spf.DNSLookup``), and what it asks depends on what it
got (an ``include`` names the next record, ``mx`` names the hosts to look up), so
its answers cannot be fetched ahead of time. Using it would mean a thread per check
that calls back into the reactor for every lookup and replacing a global of a third
party module, for what is ~300 lines of well-specified logic. This evaluator is a
coroutine over ``IDNSLookup`` (cached, time-bounded), with RFC 7208's limits
explicit:

- at most ``max_lookups`` (10) terms that cause DNS queries (``include``, ``a``,
  ``mx``, ``ptr``, ``exists``, ``redirect``) over the whole evaluation, includes
  and redirects counted together, else ``permerror`` (§4.6.4);
- at most ``max_void_lookups`` (2) lookups answered NXDOMAIN or NODATA, else
  ``permerror`` (§4.6.4);
- at most 10 MX hosts for an ``mx`` and 10 PTR names for a ``ptr`` (§4.6.4);
- the whole check bounded by ``timeout`` seconds (§4.6.4 asks for at least 20),
  after which it is ``temperror``.

A syntax error anywhere in a record is ``permerror`` before anything is evaluated
(§4.6). The ``p`` macro expands to ``unknown`` (§7.3 allows it and discourages the
macro); ``exp=`` is parsed but not fetched (the explanation is only reply text).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from mailhost.dns.interfaces import Answer, DNSNameInvalid, DNSTemporaryError, IDNSLookup
from mailhost.mailauth.textcache import ParsedByText

RESULTS = ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")
QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.]*$")
_MACRO = re.compile(r"%\{([slodiphcrtvSLODIPHCRTV])([0-9]*)(r?)([.\-+,/_=]*)\}|%%|%_|%-|%")
_DUAL_CIDR = re.compile(r"^(?:/([0-9]{1,2}))?(?://([0-9]{1,3}))?$")


class PermError(Exception):
    """The record (or the evaluation) breaks a rule: result ``permerror``."""


class TempError(Exception):
    """DNS failed: result ``temperror``."""


@dataclass(frozen=True)
class SPFResult:
    """The outcome of one check, for Authentication-Results and DMARC."""

    result: str
    domain: str  # the domain whose policy was checked
    identity: str  # "mailfrom" or "helo"
    reason: str = ""  # the mechanism that matched, or what went wrong
    sender: str = ""  # the address checked (postmaster@helo for an empty MAIL FROM)


@dataclass(frozen=True)
class _Term:
    qualifier: str
    name: str
    argument: str  # domain-spec or ip network, without the leading ':'
    cidr4: int
    cidr6: int
    text: str
    #: ip4/ip6: the network, parsed once with the record.
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


@dataclass(frozen=True)
class _Record:
    directives: tuple[_Term, ...]
    redirect: str | None
    exp: str | None


def valid_domain(domain: str) -> bool:
    """A multi-label name that DNS can carry (RFC 7208 §4.3)."""
    labels = domain.rstrip(".").split(".")
    return (len(labels) >= 2 and len(domain.rstrip(".")) <= 253
            and all(0 < len(label) <= 63 for label in labels))


def parse_record(text: str) -> _Record:
    """Parse a ``v=spf1`` record; PermError on any syntax error (§4.6, §12)."""
    terms = text.split(" ")
    if terms[0].lower() != "v=spf1":
        raise PermError("not an SPF record")
    directives: list[_Term] = []
    redirect = exp = None
    for term in terms[1:]:
        if not term:
            continue
        m = re.match(r"^([A-Za-z][A-Za-z0-9\-_.]*)=(.*)$", term)
        if m:
            name, value = m.group(1).lower(), m.group(2)
            _check_macro_string(value)
            if name == "redirect":
                if redirect is not None:
                    raise PermError("two redirect= modifiers")
                _check_domain_spec(value)
                redirect = value
            elif name == "exp":
                if exp is not None:
                    raise PermError("two exp= modifiers")
                _check_domain_spec(value)
                exp = value
            continue  # unknown modifiers are ignored (§6)
        directives.append(_parse_directive(term))
    return _Record(tuple(directives), redirect, exp)


def _parse_directive(term: str) -> _Term:
    qualifier = "+"
    rest = term
    if rest[:1] in QUALIFIERS:
        qualifier, rest = rest[0], rest[1:]
    m = re.match(r"^([A-Za-z0-9]+)(.*)$", rest)
    if not m or m.group(1).lower() not in MECHANISMS:
        raise PermError(f"unknown mechanism {term!r}")
    name, tail = m.group(1).lower(), m.group(2)
    argument = ""
    cidr4, cidr6 = 32, 128
    network = None
    if name == "all":
        if tail:
            raise PermError(f"bad term {term!r}")
    elif name in ("include", "exists"):
        if not tail.startswith(":") or len(tail) < 2:
            raise PermError(f"{name} needs a domain: {term!r}")
        argument = tail[1:]
        _check_domain_spec(argument)
    elif name in ("a", "mx", "ptr"):
        spec, cidr = tail, ""
        if name != "ptr":
            # The dual-cidr-length is at the end: "/24", "//64", "/24//64".
            cm = re.search(r"(/[0-9]{1,2})?(//[0-9]{1,3})?$", tail)
            if cm and cm.group(0):
                spec, cidr = tail[: cm.start()], cm.group(0)
        if spec:
            if not spec.startswith(":") or len(spec) < 2:
                raise PermError(f"bad term {term!r}")
            argument = spec[1:]
            _check_domain_spec(argument)
        if cidr:
            dm = _DUAL_CIDR.match(cidr)
            if not dm:
                raise PermError(f"bad CIDR length in {term!r}")
            if dm.group(1) is not None:
                cidr4 = int(dm.group(1))
            if dm.group(2) is not None:
                cidr6 = int(dm.group(2))
            lengths = [g for g in dm.groups() if g is not None]
            if cidr4 > 32 or cidr6 > 128 or any(len(g) > 1 and g[0] == "0" for g in lengths):
                raise PermError(f"bad CIDR length in {term!r}")
    else:  # ip4, ip6
        if not tail.startswith(":"):
            raise PermError(f"{name} needs an address: {term!r}")
        argument = tail[1:]
        try:
            network = ipaddress.ip_network(argument, strict=False)
        except ValueError:
            raise PermError(f"bad address in {term!r}") from None
        if (network.version == 4) != (name == "ip4") or "/" in argument and \
                not re.fullmatch(r"(0|[1-9][0-9]{0,2})", argument.rsplit("/", 1)[1]):
            raise PermError(f"bad address in {term!r}")
    return _Term(qualifier, name, argument, cidr4, cidr6, term, network)


def _check_macro_string(value: str) -> None:
    for m in _MACRO.finditer(value):
        if m.group(0) == "%":
            raise PermError(f"bad macro in {value!r}")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in value):
        raise PermError(f"bad character in {value!r}")


def _check_domain_spec(value: str) -> None:
    _check_macro_string(value)
    if not value:
        raise PermError("empty domain")
    # The domain-end (§7.1): a toplabel, or a macro-expand.
    if not (value.endswith("}") or re.search(r"\.[A-Za-z0-9-]*[A-Za-z][A-Za-z0-9-]*\.?$", "." + value)
            and not value.rstrip(".").endswith("-")):
        raise PermError(f"bad domain {value!r}")


class _Evaluation:
    """One check_host() with its shared counters."""

    def __init__(self, checker: SPFChecker, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                 sender: str, helo: str) -> None:
        self.checker = checker
        self.lookup = checker.lookup
        self.ip = ip
        self.sender = sender
        self.helo = helo
        self.lookups = 0
        self.voids = 0

    def count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > self.checker.max_lookups:
            raise PermError(f"more than {self.checker.max_lookups} DNS lookups")

    async def ask(self, name: str, rtype: str, void_counts: bool = True) -> Answer:
        try:
            answer = await self.lookup.lookup(name, rtype)
        except DNSTemporaryError as e:
            raise TempError(str(e)) from None
        except DNSNameInvalid:
            raise PermError(f"bad name {name!r}") from None
        if answer.void and void_counts:
            self.voids += 1
            if self.voids > self.checker.max_void_lookups:
                raise PermError(f"more than {self.checker.max_void_lookups} void lookups")
        return answer

    async def check_host(self, domain: str, depth: int = 0) -> tuple[str, str]:
        """(result, reason) for ``domain``; PermError/TempError propagate."""
        if depth > 20:
            raise PermError("include/redirect loop")
        domain = domain.rstrip(".").lower()
        if not valid_domain(domain):
            return "none", f"{domain!r} is not a domain"
        try:
            answer = await self.lookup.lookup(domain, "TXT")
        except DNSTemporaryError as e:
            raise TempError(str(e)) from None
        except DNSNameInvalid:
            return "none", f"{domain!r} is not a domain"
        records = []
        for raw in answer.records:
            text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
            if text.lower() == "v=spf1" or text.lower().startswith("v=spf1 "):
                records.append(text)
        if not records:
            return "none", f"no SPF record at {domain}"
        if len(records) > 1:
            raise PermError(f"{len(records)} SPF records at {domain}")
        record = self.checker.parsed(records[0])
        for term in record.directives:
            if await self.matches(term, domain, depth):
                return QUALIFIERS[term.qualifier], f"{term.text} matched at {domain}"
        if record.redirect is not None:
            self.count_lookup()
            target = self.expand(record.redirect, domain)
            result, reason = await self.check_host(target, depth + 1)
            if result == "none":
                raise PermError(f"redirect to {target}: no SPF record")
            return result, reason
        return "neutral", f"no mechanism matched at {domain}"

    async def matches(self, term: _Term, domain: str, depth: int) -> bool:
        name = term.name
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            network = term.network or ipaddress.ip_network(term.argument, strict=False)
            return self.ip.version == network.version and self.ip in network
        self.count_lookup()
        target = self.expand(term.argument, domain) if term.argument else domain
        if name == "include":
            result, _reason = await self.check_host(target, depth + 1)
            if result == "pass":
                return True
            if result in ("fail", "softfail", "neutral"):
                return False
            raise PermError(f"include:{target} gave {result}")
        if name == "exists":
            return bool((await self.ask(target, "A")).records)
        if name == "a":
            return await self.address_match(target, term)
        if name == "mx":
            answer = await self.ask(target, "MX")
            hosts = [host for _pref, host in answer.records if host]
            if len(hosts) > 10:
                raise PermError(f"more than 10 MX hosts at {target}")
            for host in hosts:
                if await self.address_match(host, term):
                    return True
            return False
        if name == "ptr":
            return await self.ptr_match(target)
        raise PermError(f"unknown mechanism {name}")  # parse_record prevents this

    async def address_match(self, host: str, term: _Term) -> bool:
        rtype = "A" if self.ip.version == 4 else "AAAA"
        answer = await self.ask(host, rtype)
        prefix = term.cidr4 if self.ip.version == 4 else term.cidr6
        for address in answer.records:
            try:
                network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
            except ValueError:
                continue
            if self.ip in network:
                return True
        return False

    async def ptr_match(self, target: str) -> bool:
        try:
            answer = await self.ask(self.ip.reverse_pointer, "PTR")
        except TempError:
            return False  # §5.5: a DNS error makes ptr not match
        rtype = "A" if self.ip.version == 4 else "AAAA"
        for name in answer.records[:10]:
            if not (name == target or name.endswith("." + target)):
                continue
            try:
                addresses = await self.lookup.lookup(name, rtype)
            except (DNSTemporaryError, DNSNameInvalid):
                continue
            if str(self.ip) in {str(ipaddress.ip_address(a)) for a in addresses.records}:
                return True
        return False

    def expand(self, spec: str, domain: str) -> str:
        """Macro expansion (§7) of a domain-spec, then §7.3's length rule."""
        local, _, sender_domain = self.sender.rpartition("@")

        def value(letter: str) -> str:
            letter_l = letter.lower()
            if letter_l == "s":
                return self.sender
            if letter_l == "l":
                return local
            if letter_l == "o":
                return sender_domain
            if letter_l == "d":
                return domain
            if letter_l == "i":
                if self.ip.version == 4:
                    return str(self.ip)
                return ".".join(self.ip.exploded.replace(":", ""))
            if letter_l == "p":
                return "unknown"
            if letter_l == "v":
                return "in-addr" if self.ip.version == 4 else "ip6"
            if letter_l == "h":
                return self.helo
            raise PermError(f"macro %{{{letter}}} is only for exp=")

        def replace(m: re.Match[str]) -> str:
            token = m.group(0)
            if token == "%%":
                return "%"
            if token == "%_":
                return " "
            if token == "%-":
                return "%20"
            if token == "%":
                raise PermError(f"bad macro in {spec!r}")
            letter, digits, reverse, delimiters = m.groups()
            parts = re.split("[" + re.escape(delimiters or ".") + "]", value(letter))
            if reverse:
                parts.reverse()
            if digits:
                keep = int(digits)
                if keep == 0:
                    raise PermError(f"bad macro in {spec!r}")
                parts = parts[-keep:]
            out = ".".join(parts)
            if letter.isupper():
                out = urllib.parse.quote(out, safe="")
            return out

        expanded = _MACRO.sub(replace, spec)
        expanded = expanded.rstrip(".")
        while len(expanded) > 253 and "." in expanded:
            expanded = expanded.split(".", 1)[1]
        return expanded


class SPFChecker:
    """Checks MAIL FROM and HELO identities with an injected ``IDNSLookup``."""

    def __init__(self, lookup: IDNSLookup, max_lookups: int = 10, max_void_lookups: int = 2,
                 timeout: float = 20.0, reactor: Any = None) -> None:
        self.lookup = lookup
        self.max_lookups = max_lookups
        self.max_void_lookups = max_void_lookups
        self.timeout = timeout
        self.reactor = reactor
        self._records: ParsedByText[str, _Record] = ParsedByText()

    def parsed(self, text: str) -> _Record:
        """``parse_record(text)``, parsed once; PermError is not kept (it is rare)."""
        return self._records.get(text, lambda: parse_record(text))

    async def check_host(self, ip: str, domain: str, sender: str, helo: str = "",
                         identity: str = "mailfrom") -> SPFResult:
        """RFC 7208 §4's check_host(): never raises, whatever the records say."""
        try:
            address = ipaddress.ip_address(ip.split("%")[0])
        except ValueError:
            return SPFResult("permerror", domain, identity, f"bad client address {ip!r}", sender)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        evaluation = _Evaluation(self, address, sender, helo)
        run = defer.Deferred.fromCoroutine(evaluation.check_host(domain))
        if self.timeout and not run.called:  # (answered from the DNS cache: no timer)
            if self.reactor is None:
                from twisted.internet import reactor as default_reactor

                self.reactor = default_reactor
            run.addTimeout(self.timeout, self.reactor)
        try:
            result, reason = await run
        except PermError as e:
            return SPFResult("permerror", domain, identity, str(e), sender)
        except (TempError, defer.TimeoutError) as e:
            return SPFResult("temperror", domain, identity, str(e) or "timeout", sender)
        return SPFResult(result, domain, identity, reason, sender)

    async def check_mail_from(self, ip: str, mail_from: str, helo: str) -> SPFResult:
        """The MAIL FROM identity; ``<>`` checks postmaster@<HELO> (§2.4)."""
        sender = mail_from.strip("<>")
        if not sender:
            return await self.check_helo(ip, helo, identity="mailfrom")
        local, at, domain = sender.rpartition("@")
        if not at:
            return SPFResult("none", sender, "mailfrom", "no domain in MAIL FROM", sender)
        if not local:
            sender = "postmaster@" + domain
        return await self.check_host(ip, domain, sender, helo, "mailfrom")

    async def check_helo(self, ip: str, helo: str, identity: str = "helo") -> SPFResult:
        """The HELO identity (§2.3); a HELO that is no domain name is ``none``."""
        helo = helo.strip().rstrip(".")
        if not valid_domain(helo) or helo.startswith("["):
            return SPFResult("none", helo, identity, "HELO is not a domain name")
        return await self.check_host(ip, helo, "postmaster@" + helo, helo, identity)
