"""TLS for every listener: one context built from config, and dev certificates.

STARTTLS (SMTP, POP3 STLS, IMAP) and implicit-TLS listeners (465/995/993) share the
same ``CertificateOptions``, with TLS 1.2 as the floor and, for TLS 1.2, only AEAD
cipher suites with forward secrecy unless ``tls.ciphers = "legacy"`` (the CBC suites
are obsolete and exposed to LUCKY13-style padding oracles). TLS 1.3 suites are all
AEAD and not affected by this setting.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import ssl
from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
    TLSMemoryBIOProtocol,
)

from mailhost.config import ConfigError, TLSConfig

#: OpenSSL cipher strings for TLS 1.2 by ``tls.ciphers``. "aead" is Mozilla's
#: "intermediate" list: ECDHE or DHE with AES-GCM or ChaCha20-Poly1305.
CIPHERS = {
    "aead": ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
             "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
             "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
             "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"),
    # Twisted's default selection, which adds the CBC suites.
    "legacy": ("ECDH+AESGCM:ECDH+CHACHA20:DH+AESGCM:DH+CHACHA20:ECDH+AES256:DH+AES256:"
               "ECDH+AES128:DH+AES:RSA+AESGCM:RSA+AES:!aNULL:!MD5:!DSS"),
}


def acceptable_ciphers(name: str) -> Any:
    """The ``acceptableCiphers`` for ``tls.ciphers`` = ``name``."""
    return ssl.AcceptableCiphers.fromOpenSSLCipherString(CIPHERS[name])


def server_options(tls: TLSConfig) -> ssl.CertificateOptions | None:
    """Server-side TLS options from config, or None when TLS is not configured.

    Raises ``ConfigError`` (one line naming the key) when a file is missing or
    unreadable, is not PEM, or the key does not belong to the certificate. The
    certificate and key go to Twisted as ``cryptography`` objects: pyOpenSSL
    deprecates its own ``X509``/``PKey`` (what ``PrivateCertificate.loadPEM`` gives).
    """
    if not (tls.cert and tls.key):
        return None
    cert_pem = _read("tls.cert", tls.cert)
    key_pem = _read("tls.key", tls.key)
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ConfigError(f"tls.cert: no PEM certificate in {tls.cert}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"tls.key: not an unencrypted PEM private key: {tls.key} ({e})") from None
    if key.public_key() != certs[0].public_key():
        raise ConfigError(f"tls.key: {tls.key} is not the key of the certificate in {tls.cert}")
    minimum = {
        "1.2": ssl.TLSVersion.TLSv1_2,
        "1.3": ssl.TLSVersion.TLSv1_3,
    }[tls.min_version]
    # The leaf first, then the intermediates that follow it in the cert file. (Twisted
    # takes cryptography's objects; its annotations still name pyOpenSSL's.)
    return ssl.CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=certs[0],  # type: ignore[arg-type]
        extraCertChain=certs[1:] or None,  # type: ignore[arg-type]
        raiseMinimumTo=minimum,
        acceptableCiphers=acceptable_ciphers(tls.ciphers),
    )


def _read(name: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{name}: cannot read {path}: {e.strerror}") from None


def write_selfsigned(hostname: str, cert_path: str, key_path: str, days: int = 825) -> None:
    """Write a self-signed certificate for ``hostname`` (and 127.0.0.1, ::1, localhost).

    For development and tests: clients can verify it by using ``cert_path`` as their
    CA file.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    alt: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname != "localhost":
        alt.append(x509.DNSName("localhost"))
    alt += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    for d in {os.path.dirname(os.path.abspath(p)) for p in (cert_path, key_path)}:
        os.makedirs(d, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def handshake_done(tls: TLSMemoryBIOProtocol) -> bool:
    """True once the TLS handshake of ``tls`` (a server connection) has completed.

    Asked through public API only: the OpenSSL connection (``getHandle``) holds the
    peer's Finished message once the handshake is over (TLS 1.2 and 1.3 alike), and
    Twisted's own flag is private.
    """
    return tls.getHandle().get_peer_finished() is not None


class _DeadlineTLS(BufferingTLSTransport):
    """Implicit-TLS server connection that must finish its handshake in time.

    Twisted's TLS layer closes a connection with output buffered before the handshake
    (the protocol's greeting) only after the handshake, so that the output still
    reaches the client: a client that connected to 465, 993 or 995 and said nothing
    held its connection slot past every timeout. The deadline aborts it.
    """

    factory: HandshakeDeadlineFactory

    def makeConnection(self, transport: Any) -> None:  # noqa: N802 (Twisted hook)
        self._deadline = self.factory.clock.callLater(
            self.factory.handshake_timeout, self._expire)
        super().makeConnection(transport)

    def _expire(self) -> None:
        if not handshake_done(self):
            self.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if self._deadline.active():
            self._deadline.cancel()
        super().connectionLost(reason)


class HandshakeDeadlineFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` for implicit-TLS listeners, with a handshake deadline."""

    protocol = _DeadlineTLS

    def __init__(self, options: Any, wrapped: IProtocolFactory, handshake_timeout: float,
                 clock: IReactorTime) -> None:
        super().__init__(options, False, wrapped, clock)
        self.handshake_timeout = handshake_timeout
        self.clock = clock


def start_tls(transport: Any, options: Any, timeout: float, clock: Any = None) -> Any:
    """STARTTLS/STLS with the deadline of ``_DeadlineTLS``: a client that asked for TLS
    and then never completes the handshake is disconnected after ``timeout`` seconds
    (closing it politely would wait for the handshake forever).

    Returns the deadline's ``IDelayedCall`` (or None): the protocol cancels it in its
    ``connectionLost``, so a closed connection leaves no timer behind (trial reports a
    pending timer as a dirty reactor).
    """
    transport.startTLS(options)
    tcp = transport
    while isinstance(tcp, ProtocolWrapper):  # our wrappers, down to the socket
        tcp = tcp.transport
    tls = getattr(tcp, "protocol", None)
    if not isinstance(tls, TLSMemoryBIOProtocol):
        return None
    if clock is None:
        from twisted.internet import reactor as clock

    def expire() -> None:
        if not handshake_done(tls) and not getattr(tcp, "disconnected", False):
            tcp.abortConnection()

    return clock.callLater(timeout, expire)


def cancel_deadline(call: Any) -> None:
    """Cancel a deadline ``start_tls`` returned, if it is still pending."""
    if call is not None and call.active():
        call.cancel()
