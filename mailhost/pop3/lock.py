"""The maildrop lock: one POP3 session per user at a time (RFC 1939 section 8).

Two sessions over one maildrop would number messages differently and race their
UPDATE states. The lock lives in this process (held by the factory, shareable by the
plain and TLS listeners); IMAP sessions are not locked out, the store keeps them
consistent through its listeners.
"""

from __future__ import annotations


class MaildropLocks:
    """The set of users with a live POP3 session."""

    def __init__(self) -> None:
        self._held: set[str] = set()

    def acquire(self, user: str) -> bool:
        """Take the lock for ``user``; False when another session holds it."""
        if user in self._held:
            return False
        self._held.add(user)
        return True

    def release(self, user: str) -> None:
        self._held.discard(user)

    def held(self, user: str) -> bool:
        return user in self._held
