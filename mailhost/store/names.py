"""Validation of user and folder names, so no name can escape a store's root.

Both stores use the same rules, so a name that works on MemoryStore works on
MaildirStore and vice versa.
"""

from __future__ import annotations

from mailhost.store import mutf7
from mailhost.store.interfaces import InvalidFolderName, StoreError

INBOX = "INBOX"
DELIMITER = "."

# One folder becomes one directory ".A.B" (modified UTF-7); keep well under NAME_MAX
# (255 bytes).
MAX_FOLDER_BYTES = 200
MAX_USER_PART_BYTES = 128


class InvalidUserName(StoreError):
    """The user address cannot be a directory name (traversal, control chars...)."""


def _bad_component(part: str) -> bool:
    if not part or part.startswith("."):
        return True
    if "/" in part or "\\" in part:
        return True
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in part)


def canonical_folder(name: str) -> str:
    """Validate ``name`` and return its canonical spelling ('inbox' -> 'INBOX').

    Refuses empty components (so no leading/trailing/double '.'), '/', '\\\\',
    NUL and other control characters, and over-long names.
    """
    if not isinstance(name, str):
        raise InvalidFolderName(repr(name))
    parts = name.split(DELIMITER)
    if any(_bad_component(p) for p in parts):
        raise InvalidFolderName(name)
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    canon = DELIMITER.join(parts)
    try:
        encoded = canon.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        raise InvalidFolderName(name) from None
    # The directory is spelt in modified UTF-7, which can be longer than UTF-8.
    if max(len(encoded), len(mutf7.encode(canon))) > MAX_FOLDER_BYTES:
        raise InvalidFolderName(name)
    return canon


def parents(name: str) -> list[str]:
    """The ancestors of a canonical folder name, outermost first ('A.B.C' -> A, A.B)."""
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:i]) for i in range(1, len(parts))]


def is_inferior(name: str, ancestor: str) -> bool:
    """True when ``name`` lies strictly below ``ancestor`` in the hierarchy."""
    return name.startswith(ancestor + DELIMITER)


def split_user(user: str) -> tuple[str, str]:
    """Validate a user address and return (localpart, domain) for the directory layout."""
    if not isinstance(user, str) or user.count("@") != 1:
        raise InvalidUserName(repr(user))
    local, domain = user.split("@")
    for part in (local, domain):
        if _bad_component(part) or part in (".", ".."):
            raise InvalidUserName(user)
        try:
            if len(part.encode("utf-8")) > MAX_USER_PART_BYTES:
                raise InvalidUserName(user)
        except UnicodeEncodeError:
            raise InvalidUserName(user) from None
    return local, domain
