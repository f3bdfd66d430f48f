"""Who lives here: local domains, users, aliases and catch-alls.

SMTP asks it where a recipient's mail goes, submission asks which sender addresses a
user owns, and the queue asks whether a bounce stays local. It reads through to the
passwd and aliases files (each reloads itself on change), so edits need no restart.

``postmaster`` always exists (RFC 5321 4.5.1): ``postmaster@`` every local domain (and
a bare ``<postmaster>``, which SMTP reads as the first domain's) that no user or alias
claims goes to ``auth.postmaster``, or by default to ``postmaster@<first domain>`` if
that is a user, else to the first user of the passwd file. A site whose users were
added before the first start (so no postmaster user was made) still gets its mail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from zope.interface import Interface, implementer

from mailhost.auth.passwd import normalize_address
from mailhost.settings import DirectorySettings

if TYPE_CHECKING:
    from mailhost.auth.checkers import InMemoryChecker

UsersSource = Callable[[], Mapping[str, Sequence[str]]]
AliasSource = Callable[[], Mapping[str, list[str]]]


class IUserDirectory(Interface):
    """Recipient resolution for the local domains."""

    def is_local_domain(domain: str) -> bool:
        """True if mail for this domain is delivered here."""

    def lookup(address: str) -> list[str]:
        """The local mailboxes that receive mail for ``address``; [] if none."""

    def addresses_for(user: str) -> set[str]:
        """Addresses ``user`` may send as: their own and the aliases pointing at them."""

    def user_exists(user: str) -> bool:
        """True if ``user`` has a mailbox here."""


class IForwardingDirectory(Interface):
    """A directory whose aliases may name addresses of other domains (forwarding).

    Separate from ``IUserDirectory`` so an embedder's own directory need not know of
    it: SMTP forwards only through a directory that provides this."""

    def forwards(address: str) -> list[str]:
        """The remote addresses (other domains) the aliases of ``address`` expand
        to, besides its local mailboxes; [] if none."""


@implementer(IUserDirectory, IForwardingDirectory)
class UserDirectory:
    """Implements: IUserDirectory over a users source and an alias table.

    ``users()`` maps each user to the extra aliases from its passwd line;
    ``aliases()`` is the aliases file (``name -> targets``, ``@domain`` is a catch-all).
    ``user+tag@domain`` reaches ``user@domain`` (recipient_delimiter ``+``), as in the
    common Postfix/Dovecot setup.
    """

    max_depth = 10

    def __init__(self, domains: Iterable[str], users: UsersSource,
                 aliases: AliasSource | None = None, recipient_delimiter: str = "+",
                 postmaster: str = "") -> None:
        self._set_domains(domains, postmaster)
        self._users = users
        self._aliases = aliases or (lambda: {})
        self.recipient_delimiter = recipient_delimiter
        self.checker: InMemoryChecker | None = None  # set by in_memory(); the service wires its own
        self._table_cache: tuple[object, object, dict[str, list[str]]] | None = None

    def _set_domains(self, domains: Iterable[str], postmaster: str) -> None:
        ordered = [d.strip().lower().rstrip(".") for d in domains]
        self.domains = set(ordered)
        self.first_domain = ordered[0] if ordered else ""
        # Mailbox (or local alias) for postmaster mail nobody else claims; "" = default.
        self.postmaster = postmaster

    def use_settings(self, settings: DirectorySettings) -> None:
        """Reload: the local domains and the postmaster mailbox from now on."""
        self._set_domains(settings.domains, settings.postmaster)

    @classmethod
    def in_memory(cls, domains: Iterable[str], users: Mapping[str, str],
                  aliases: Mapping[str, list[str]] | None = None) -> UserDirectory:
        """A directory plus a matching in-memory checker (``.checker``), for tests."""
        from mailhost.auth.checkers import InMemoryChecker

        checker = InMemoryChecker(dict(users))
        table = {normalize_address(k): [normalize_address(t) for t in v]
                 for k, v in (aliases or {}).items()}
        directory = cls(domains, checker.mail_users, lambda: table)
        directory.checker = checker
        return directory

    def is_local_domain(self, domain: str) -> bool:
        return domain.strip().lower().rstrip(".") in self.domains

    def user_exists(self, user: str) -> bool:
        return normalize_address(user) in self._users()

    def _alias_table(self, users: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        """Aliases file plus per-user aliases, rebuilt only when either source changed
        (the file-backed sources return the same objects until their file changes;
        every RCPT asks, so an O(users) rebuild each time would be a hot path)."""
        aliases = self._aliases()
        cached = self._table_cache
        if cached is not None and cached[0] is users and cached[1] is aliases:
            return cached[2]
        table: dict[str, list[str]] = {}
        for name, targets in aliases.items():
            table.setdefault(name, []).extend(targets)
        for user, extra in users.items():
            for alias in extra:
                table.setdefault(alias, []).append(user)
        self._table_cache = (users, aliases, table)
        return table

    def lookup(self, address: str) -> list[str]:
        return self.expand(address)[0]

    def forwards(self, address: str) -> list[str]:
        return self.expand(address)[1]

    def expand(self, address: str) -> tuple[list[str], list[str]]:
        """(local mailboxes, remote addresses) that mail for ``address`` goes to.
        An alias target in another domain is forwarded there through the outbound
        queue (the ARC seal says what we found, ``mailhost.pipeline.arc_seal``)."""
        users = self._users()
        table = self._alias_table(users)
        found: list[str] = []
        remote: list[str] = []
        seen: set[str] = set()

        def resolve(addr: str, depth: int) -> None:
            if addr in seen or depth > self.max_depth:
                return
            seen.add(addr)
            local, _, domain = addr.rpartition("@")
            if not self.is_local_domain(domain):
                if depth > 0 and domain and addr not in remote:
                    remote.append(addr)  # an alias target elsewhere: forwarded
                return
            if addr in users:
                if addr not in found:
                    found.append(addr)
                return
            if addr in table:
                for target in table[addr]:
                    resolve(target, depth + 1)
                return
            delim = self.recipient_delimiter
            if delim and delim in local:
                base = local.split(delim, 1)[0] + "@" + domain
                if base in users or base in table:
                    resolve(base, depth + 1)
                    return
            catch_all = "@" + domain
            if catch_all in table and depth == 0:
                for target in table[catch_all]:
                    resolve(target, depth + 1)

        address = normalize_address(address)
        resolve(address, 0)
        local, _, domain = address.rpartition("@")
        if not found and local == "postmaster" and self.is_local_domain(domain):
            target = self.postmaster_mailbox(users)
            if target is not None:
                resolve(target, 1)
        return found, remote

    def postmaster_mailbox(self, users: Mapping[str, Sequence[str]] | None = None) -> str | None:
        """Where postmaster mail goes when no user or alias is named postmaster: the
        configured ``postmaster``, else ``postmaster@<first domain>`` if it is a user,
        else the first user; None only when there are no users at all."""
        if self.postmaster:
            return normalize_address(self.postmaster)
        if users is None:
            users = self._users()
        first = f"postmaster@{self.first_domain}"
        if first in users:
            return first
        return next(iter(users), None)

    def addresses_for(self, user: str) -> set[str]:
        """Only addresses in a local domain: an alias elsewhere (``evil@other.test``,
        written by hand or by an old CLI) never lets a user send as it."""
        user = normalize_address(user)
        owned = {user}
        owned.update(self._users().get(user, []))
        for name, targets in self._aliases().items():
            if not name.startswith("@") and user in targets:
                owned.add(name)
        return {a for a in owned if a == user or self.is_local_domain(a.rpartition("@")[2])}
