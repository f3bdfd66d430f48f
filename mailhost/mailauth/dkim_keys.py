"""DKIM signing keys: make them, read them, and the DNS record that publishes them.

Keys are PEM files that OpenSSL and OpenDKIM read too: RSA as PKCS#1
(``BEGIN RSA PRIVATE KEY``), Ed25519 as PKCS#8 (``BEGIN PRIVATE KEY``). dkimpy wants
RSA keys as PKCS#1 PEM and Ed25519 keys as the base64 of the 32-octet seed, so
``SigningKey`` holds that form, converted once when the file is read.

The public half is published at ``<selector>._domainkey.<domain>`` as
``v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>`` (RFC 6376 §3.6.1) or
``v=DKIM1; k=ed25519; p=<base64 of the 32-octet key>`` (RFC 8463 §4).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

Algorithm = Literal["rsa", "ed25519"]
SIGNATURE_ALGORITHM = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}


class DKIMKeyError(ValueError):
    """A key file that cannot be used for DKIM (unreadable, wrong type, too small)."""


@dataclass(frozen=True)
class SigningKey:
    """One (domain, selector) key in the form dkimpy signs with."""

    domain: str
    selector: str
    algorithm: Algorithm
    private: bytes  # dkimpy's form (see the module docstring)
    public_record: str

    @property
    def signature_algorithm(self) -> str:
        return SIGNATURE_ALGORITHM[self.algorithm]

    def __repr__(self) -> str:  # never print key material
        return f"SigningKey({self.domain!r}, {self.selector!r}, {self.algorithm!r})"


def generate_pem(algorithm: Algorithm, bits: int = 2048) -> bytes:
    """A new private key as PEM."""
    if algorithm == "rsa":
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        return rsa_key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption())
    if algorithm == "ed25519":
        ed_key = ed25519.Ed25519PrivateKey.generate()
        return ed_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    raise DKIMKeyError(f"unknown DKIM algorithm {algorithm!r}")


def key_from_pem(domain: str, selector: str, pem: bytes, min_rsa_bits: int = 1024) -> SigningKey:
    """The ``SigningKey`` of a PEM private key; its algorithm comes from the key."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise DKIMKeyError(f"not a usable private key: {e}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < min_rsa_bits:
            raise DKIMKeyError(f"RSA key of {key.key_size} bits is too small")
        private = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        record = f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"
        return SigningKey(domain.lower(), selector, "rsa", private, record)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        record = f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
        return SigningKey(domain.lower(), selector, "ed25519", base64.b64encode(seed), record)
    raise DKIMKeyError(f"{type(key).__name__} keys cannot sign DKIM (RSA or Ed25519 only)")


def load_key(domain: str, selector: str, path: str) -> SigningKey:
    """Read a key file (blocking: call at startup or reload, not per message)."""
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise DKIMKeyError(f"{path}: {e.strerror}") from None
    try:
        return key_from_pem(domain, selector, pem)
    except DKIMKeyError as e:
        raise DKIMKeyError(f"{path}: {e}") from None


def write_key(path: str, pem: bytes) -> None:
    """Write a private key 0600 (created so, never readable by others even briefly);
    refuses to overwrite an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)


def txt_strings(record: str, size: int = 255) -> list[str]:
    """The record cut into DNS character-strings of at most ``size`` octets."""
    return [record[i:i + size] for i in range(0, len(record), size)] or [""]


def zone_line(key: SigningKey, ttl: int = 3600) -> str:
    """The zone-file line that publishes ``key`` (strings of at most 255 octets)."""
    strings = " ".join(f'"{s}"' for s in txt_strings(key.public_record))
    return f"{key.selector}._domainkey.{key.domain}. {ttl} IN TXT ( {strings} )"
