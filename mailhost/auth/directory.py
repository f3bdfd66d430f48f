"""Who lives here: local domains, users, aliases and catch-alls.

SMTP asks it where a recipient's mail goes, submission asks which sender addresses a
user owns, and the queue asks whether a bounce stays local. It reads through to the
passwd and aliases files (each reloads itself on change), so edits need no restart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from zope.interface import Interface, implementer

from mailhost.auth.passwd import normalize_address

UsersSource = Callable[[], Mapping[str, list[str]]]
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


@implementer(IUserDirectory)
class UserDirectory:
    """Implements: IUserDirectory over a users source and an alias table.

    ``users()`` maps each user to the extra aliases from its passwd line;
    ``aliases()`` is the aliases file (``name -> targets``, ``@domain`` is a catch-all).
    ``user+tag@domain`` reaches ``user@domain`` (recipient_delimiter ``+``), as in the
    common Postfix/Dovecot setup.
    """

    max_depth = 10

    def __init__(self, domains: Iterable[str], users: UsersSource,
                 aliases: AliasSource | None = None, recipient_delimiter: str = "+") -> None:
        self.domains = {d.strip().lower().rstrip(".") for d in domains}
        self._users = users
        self._aliases = aliases or (lambda: {})
        self.recipient_delimiter = recipient_delimiter
        self.checker = None  # set by in_memory(); the service wires its own
        self._table_cache: tuple[object, object, dict[str, list[str]]] | None = None

    @classmethod
    def in_memory(cls, domains: Iterable[str], users: Mapping[str, str],
                  aliases: Mapping[str, list[str]] | None = None) -> UserDirectory:
        """A directory plus a matching in-memory checker (``.checker``), for tests."""
        from mailhost.auth.checkers import InMemoryChecker

        checker = InMemoryChecker(dict(users))
        table = {normalize_address(k): [normalize_address(t) for t in v]
                 for k, v in (aliases or {}).items()}
        directory = cls(domains, lambda: {u: [] for u in checker.users}, lambda: table)
        directory.checker = checker
        return directory

    def is_local_domain(self, domain: str) -> bool:
        return domain.strip().lower().rstrip(".") in self.domains

    def user_exists(self, user: str) -> bool:
        return normalize_address(user) in self._users()

    def _alias_table(self, users: Mapping[str, list[str]]) -> dict[str, list[str]]:
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
        users = self._users()
        table = self._alias_table(users)
        found: list[str] = []
        seen: set[str] = set()

        def resolve(addr: str, depth: int) -> None:
            if addr in seen or depth > self.max_depth:
                return
            seen.add(addr)
            local, _, domain = addr.rpartition("@")
            if not self.is_local_domain(domain):
                return  # remote alias targets are not forwarded
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

        resolve(normalize_address(address), 0)
        return found

    def addresses_for(self, user: str) -> set[str]:
        user = normalize_address(user)
        owned = {user}
        owned.update(self._users().get(user, []))
        for name, targets in self._aliases().items():
            if not name.startswith("@") and user in targets:
                owned.add(name)
        return owned
