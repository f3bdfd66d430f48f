"""Per-recipient delivery decisions: local user, unknown user, relay or refusal.

RFC 5321 wants one answer per RCPT, so this module decides each recipient alone.
It is the one place that says what is an open relay: mail for a foreign domain is
taken only from an authenticated session or a configured relay network, and only
when there is a queue to put it in. Local addresses that carry routing syntax
(``%``, ``!``, a quoted ``@``) are refused outright rather than given to the
directory, so no alias or lookup quirk can turn them into a relay.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.logger import Logger

from mailhost.auth.directory import IForwardingDirectory, UserDirectory
from mailhost.smtp.params import Address, RcptParams
from mailhost.smtp.reply import Reply

log = Logger()

_ROUTING_CHARS = ("%", "!", "@")
#: Every accepted recipient gets this one reply (made once: issue 18).
_RCPT_OK = Reply(250, "2.1.5", "Ok")


@dataclass(frozen=True)
class Decision:
    """An accepted recipient: its local mailboxes, or a remote address to queue;
    ``forwards``: remote addresses a local alias expands to (queued too)."""

    reply: Reply
    mailboxes: tuple[str, ...] = ()
    remote: str | None = None
    forwards: tuple[str, ...] = ()


def parse_networks(networks: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in networks]


def ip_in_networks(ip: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in networks)


class RecipientPolicy:
    """Decides RCPT TO for one listener. ``directory`` is a UserDirectory."""

    def __init__(self, directory, relay_networks: Sequence[str], can_queue: bool,
                 default_domain: str) -> None:
        self.directory = directory
        self.networks = parse_networks(relay_networks)
        self.can_queue = can_queue
        self.default_domain = default_domain

    def _resolve(self, address: str) -> tuple[list[str], list[str]]:
        """(local mailboxes, remote alias targets) of ``address``. A ``UserDirectory``
        answers both from one expansion (each lookup re-checks the passwd and aliases
        files for changes, and every RCPT asks). Remote targets count only if the
        directory forwards and there is a queue to forward through (without one they
        are left out, and logged)."""
        directory = self.directory
        if isinstance(directory, UserDirectory):
            mailboxes, forwards = directory.expand(address)
        else:
            mailboxes = directory.lookup(address)
            forwards = (directory.forwards(address)
                        if IForwardingDirectory.providedBy(directory) else [])
        if forwards and not self.can_queue:
            log.warn("alias {address} forwards to {targets}, but there is no outbound "
                     "queue: not forwarded", address=address, targets=forwards)
            return mailboxes, []
        return mailboxes, list(forwards)

    def may_relay(self, client_ip: str, user: str | None) -> bool:
        return user is not None or ip_in_networks(client_ip, self.networks)

    def decide(self, rcpt: Address, params: RcptParams, client_ip: str,
               user: str | None) -> Decision:
        """Raise Reply for a refusal, return a Decision for an acceptance."""
        shown = str(rcpt)
        if not rcpt.domain:  # bare <postmaster>
            rcpt = Address(rcpt.local, self.default_domain)
            shown = "postmaster"
        if self.directory.is_local_domain(rcpt.domain):
            if any(c in rcpt.local for c in _ROUTING_CHARS):
                raise Reply(550, "5.1.1", f"<{shown}>: Recipient address rejected: User unknown")
            mailboxes, forwards = self._resolve(rcpt.canonical())
            if not mailboxes and not forwards:
                raise Reply(550, "5.1.1", f"<{shown}>: Recipient address rejected: User unknown")
            return Decision(_RCPT_OK, mailboxes=tuple(mailboxes),
                            forwards=tuple(forwards))
        if self.may_relay(client_ip, user):
            if self.can_queue:
                return Decision(_RCPT_OK, remote=str(rcpt))
            # A client that could relay, on a host that delivers to no other domain.
            raise Reply(554, "5.7.1", f"<{shown}>: Relay access denied "
                        "(this host does not deliver to other domains)")
        raise Reply(554, "5.7.1", f"<{shown}>: Relay access denied")
