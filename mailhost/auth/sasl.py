"""SASL PLAIN (RFC 4616) response decoding, shared by SMTP, POP3 and IMAP.

Each protocol frames the exchange its own way (``334``, ``+ ``, continuation
requests) and maps errors to its own replies, but what a PLAIN response means must
be the same everywhere: base64 of ``authzid NUL authcid NUL password``, ``=`` for an
empty response, and no proxy authorization (an authzid other than the authcid).
"""

from __future__ import annotations

import base64
import binascii


class SASLError(Exception):
    """A response that cannot be used. ``kind`` is "cancelled", "encoding" (not base64),
    "malformed" (not three UTF-8 fields with a user) or "authzid" (proxy login)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def decode_plain(response: bytes | str) -> tuple[str, str]:
    """(authcid, password) from a client's PLAIN response line; SASLError otherwise."""
    if isinstance(response, str):
        response = response.encode("ascii", "replace")
    response = response.strip()
    if response == b"*":
        raise SASLError("cancelled", "authentication cancelled")
    try:
        raw = b"" if response == b"=" else base64.b64decode(response, validate=True)
    except (binascii.Error, ValueError):
        raise SASLError("encoding", "response is not valid base64") from None
    parts = raw.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise SASLError("malformed", "expected authzid NUL authcid NUL password")
    try:
        authzid, authcid, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        raise SASLError("malformed", "credentials are not UTF-8") from None
    if authzid and authzid.lower() != authcid.lower():
        raise SASLError("authzid", "proxy authorization is not supported")
    return authcid, password
