"""How the scheduler connects to one host of a route: the ``ClientPolicy`` (TLS from
the configured policy, or DANE and MTA-STS when they take over; AUTH for a smarthost;
the timeouts), the endpoint (from ``outbound.source_address[6]``), whether a hop is
this host itself, and the TLS contexts kept between sessions."""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint

from mailhost.outbound.client_policy import ClientPolicy
from mailhost.outbound.routing import Hop, is_ip
from mailhost.outbound.security import HopPlan, TransportSecurity
from mailhost.settings import OutboundSettings

#: Seconds a connection with nothing to send waits for more mail for its domain.
IDLE_TIMEOUT = 2.0
#: Verify-policy TLS contexts kept (one per MX name).
TLS_CONTEXTS = 1000


class TLSContexts:
    """The client TLS contexts, kept: one for opportunistic TLS, one per MX name for
    ``verify`` (``optionsForClientTLS`` builds an OpenSSL context and loads the trust
    store: once per session cost 169 MB in a reconnect storm)."""

    def __init__(self) -> None:
        self._opportunistic: Any = None
        self._verify: OrderedDict[str, Any] = OrderedDict()

    def opportunistic(self) -> Any:
        if self._opportunistic is None:
            from twisted.internet import ssl

            self._opportunistic = ssl.CertificateOptions()
        return self._opportunistic

    def verify(self, name: str) -> Any:
        context = self._verify.get(name)
        if context is None:
            from twisted.internet import ssl

            context = self._verify[name] = ssl.optionsForClientTLS(name)
            while len(self._verify) > TLS_CONTEXTS:
                self._verify.popitem(last=False)
        else:
            self._verify.move_to_end(name)
        return context


def configured_tls(settings: OutboundSettings, domain: str) -> str:
    """``outbound.tls_policy``, or the domain's own in ``tls_policy_domains``."""
    tls = settings.tls_policy_domains.get(domain, settings.tls_policy)
    return tls if tls in ("opportunistic", "verify", "none") else settings.tls_policy


def client_policy(settings: OutboundSettings, security: TransportSecurity | None,
                  contexts: TLSContexts, domain: str, hop: Hop, smarthost: bool, address: str,
                  hop_plan: HopPlan | None = None) -> ClientPolicy:
    """The settings of one connection to ``address`` of ``hop``."""
    s = settings
    tls = configured_tls(s, domain)
    context: Any = None
    verifier: Any = None
    # A configured "verify" keeps its own verifying context unless DANE or an
    # enforced MTA-STS policy takes over (a "testing" policy must not weaken it).
    checked = (hop_plan is not None and security is not None
               and (tls != "verify" or hop_plan.enforce)
               and security.verifier(hop_plan, hop.name))
    if checked:
        # DANE or MTA-STS: their own context and check (security.py).
        assert hop_plan is not None
        context, verifier = checked
        if hop_plan.tls == "verify":
            tls = "verify"
    elif tls == "verify":
        context = contexts.verify(hop.name)
    elif tls == "opportunistic":
        context = contexts.opportunistic()
    loopback = is_ip(address) and ipaddress.ip_address(address).is_loopback
    return ClientPolicy(
        hostname=s.hostname,
        mx_name=hop.name,
        address=address,
        port=hop.port,
        tls=tls,
        tls_context=context,
        tls_verifier=verifier,
        username=s.smarthost_user if smarthost else "",
        password=s.smarthost_password if smarthost else "",
        allow_plain_auth=loopback or hop.name in ("localhost",),
        greeting_timeout=s.greeting_timeout,
        command_timeout=s.command_timeout,
        data_init_timeout=s.data_init_timeout,
        data_block_timeout=s.data_block_timeout,
        final_timeout=s.final_timeout,
        reply_max_lines=s.reply_max_lines,
        reply_max_bytes=s.reply_max_bytes,
        idle_timeout=IDLE_TIMEOUT,
    )


def endpoint(reactor: Any, settings: OutboundSettings, address: str,
             port: int) -> IStreamClientEndpoint:
    """The connection to ``address``, from ``outbound.source_address[6]`` if set."""
    timeout = settings.connect_timeout
    v4, v6 = settings.source_address, settings.source_address6
    if is_ip(address):
        if ":" in address:
            return TCP6ClientEndpoint(reactor, address, port, timeout=timeout,
                                      bindAddress=(v6, 0) if v6 else None)
        return TCP4ClientEndpoint(reactor, address, port, timeout=timeout,
                                  bindAddress=(v4, 0) if v4 else None)
    # A smarthost by name: one bind address for every attempt; an attempt of the
    # other family then fails at once and happy eyeballs takes the one that works.
    source = v4 or v6
    return HostnameEndpoint(reactor, address, port, timeout=timeout,
                            bindAddress=(source, 0) if source else None)


def is_self(hostname: str, local_addresses: Iterable[tuple[str, int]], hop: Hop) -> bool:
    """Whether ``hop`` is this host: our own name, or an address and port we listen on
    (a wildcard listener counts for loopback addresses)."""
    me = hostname.rstrip(".").lower()
    if hop.name.rstrip(".").lower() == me:
        return True
    for address in hop.addresses:
        for host, port in local_addresses:
            if port != hop.port:
                continue
            if host == address:
                return True
            if host in ("", "0.0.0.0", "::") and is_ip(address):
                if ipaddress.ip_address(address).is_loopback:
                    return True
    return False
