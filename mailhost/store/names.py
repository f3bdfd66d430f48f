"""Validation of user and folder names, so no name can escape a store's root.

Both stores use the same rules, so a name that works on MemoryStore works on
MaildirStore and vice versa. ``check_address`` is the one validation of a user name
or alias for the whole server: the store (here), the passwd loader and writer
(``mailhost.auth.passwd``) and ``mailhost user add`` all call it, so no tool can
create a name that another part cannot serve (issue 17, items 2 and 11).
"""

from __future__ import annotations

import functools

from mailhost.store import mutf7
from mailhost.store.interfaces import InvalidFolderName, StoreError

INBOX = "INBOX"
DELIMITER = "."

# One folder becomes one directory ".A.B" (modified UTF-7); keep well under NAME_MAX
# (255 bytes).
MAX_FOLDER_BYTES = 200
# RFC 5321 4.5.3.1: a local part of at most 64 octets, a domain of at most 255 (253
# without the root's dot, as DNS spells it), labels of at most 63.
MAX_LOCAL_BYTES = 64
MAX_DOMAIN_BYTES = 253
MAX_LABEL_BYTES = 63

# RFC 5322 atext specials allowed in a local part. Left out, though the RFC allows
# them: '/' (a path separator), '%' and '!' (routing syntax SMTP refuses for local
# domains, mailhost.smtp.policy) and '#' (starts a comment in passwd and aliases).
_LOCAL_SPECIALS = frozenset("&'*+-=?^_`{|}~$")


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
    return _canonical_folder(name)


@functools.lru_cache(maxsize=1024)
def _canonical_folder(name: str) -> str:
    """``canonical_folder`` of a string, remembered: every delivery asks for its folder
    twice, mostly "INBOX" (issue 18). A refused name raises, and is not remembered."""
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


def _utf8_len(text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates
        return -1


def _local_char(c: str) -> bool:
    if c.isascii():
        return c.isalnum() or c in _LOCAL_SPECIALS
    return c.isprintable() and not c.isspace()  # RFC 6531 UTF8-non-ascii, no controls


def _domain_label(label: str) -> bool:
    return (0 < _utf8_len(label) <= MAX_LABEL_BYTES
            and not label.startswith("-") and not label.endswith("-")
            and all(c == "-" or c.isalnum() for c in label))


def _shown(address: str) -> str:
    """The address as an error message quotes it: repr (no raw control character),
    cut to a readable length."""
    return repr(address if len(address) <= 80 else address[:60] + "..." + address[-15:])


def check_address(address: str) -> tuple[str, str]:
    """The one validation of a user name or alias: return (local part, domain).

    A name passes when every part of the server can serve it: a dot-atom local part
    of at most 64 octets (RFC 5321 4.5.3.1.1) without ``/ % ! #``, quotes, ``:``,
    ``,``, whitespace or control characters; exactly one ``@``; a domain of at least
    two LDH (or non-ASCII letter) labels. Case is not checked: callers lower-case
    (``mailhost.auth.passwd.normalize_address``). Raises InvalidUserName, whose text
    says what is wrong.
    """
    if not isinstance(address, str):
        raise InvalidUserName(f"{address!r}: not a string")
    shown = _shown(address)
    if address.count("@") != 1:
        raise InvalidUserName(f"{shown}: an address has exactly one '@' (local@domain)")
    local, domain = address.split("@")
    if not local or not domain:
        raise InvalidUserName(f"{shown}: an address is local@domain, both parts non-empty")
    bad = sorted({c for c in local if c != "." and not _local_char(c)})
    if bad:
        raise InvalidUserName(f"{shown}: the local part may not contain "
                              + " ".join(repr(c) for c in bad[:5]))
    n = _utf8_len(local)
    if n > MAX_LOCAL_BYTES:
        raise InvalidUserName(f"{shown}: the local part is {n} octets; "
                              f"at most {MAX_LOCAL_BYTES} are allowed (RFC 5321)")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidUserName(f"{shown}: the local part may not start or end with "
                              "'.' or hold '..'")
    labels = domain.split(".")
    if (len(labels) < 2 or not 0 < _utf8_len(domain) <= MAX_DOMAIN_BYTES
            or not all(_domain_label(label) for label in labels)):
        raise InvalidUserName(f"{shown}: the domain must be a host name like "
                              "example.org (letters, digits, '-' and '.')")
    return local, domain


def split_user(user: str) -> tuple[str, str]:
    """Validate a user address and return (localpart, domain) for the directory layout."""
    local, domain = check_address(user)
    for part in (local, domain):  # implied by check_address; kept as the path guard
        if _bad_component(part) or part in (".", ".."):
            raise InvalidUserName(user)
    return local, domain
