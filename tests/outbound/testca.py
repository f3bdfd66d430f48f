"""A test CA, certificates it signs, and an HTTPS server for MTA-STS policies (loopback)."""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import ssl
from twisted.web import resource, server


class TestCA:
    __test__ = False

    def __init__(self, name: str = "mailhost test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, path) -> str:
        with open(path, "wb") as f:
            f.write(self.pem())
        return str(path)

    def issue(self, *names: str, expired: bool = False):
        """(certificate, key) for ``names`` (SAN dNSNames), signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        if expired:
            start, end = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
        else:
            start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=10)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert, key

    def server_options(self, *names: str, expired: bool = False) -> ssl.CertificateOptions:
        """Server TLS options with a leaf for ``names`` and this CA in the chain."""
        cert, key = self.issue(*names, expired=expired)
        return server_options_for(cert, key, [self.cert])


def server_options_for(cert, key, chain=()) -> ssl.CertificateOptions:
    return ssl.CertificateOptions(privateKey=key, certificate=cert,
                                  extraCertChain=list(chain) or None)


def spki_sha256(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()


def cert_sha256(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


class PolicyResource(resource.Resource):
    """``/.well-known/mta-sts.txt``: ``policy`` as text/plain (``status`` to break it)."""

    isLeaf = True

    def __init__(self, policy: str) -> None:
        super().__init__()
        self.policy = policy
        self.status = 200
        self.requests: list[bytes] = []

    def render_GET(self, request):  # noqa: N802
        self.requests.append(request.path)
        if request.path != b"/.well-known/mta-sts.txt":
            request.setResponseCode(404)
            return b"not here"
        request.setResponseCode(self.status)
        if self.status in (301, 302):
            request.setHeader(b"location", b"https://elsewhere.test/.well-known/mta-sts.txt")
        request.setHeader(b"content-type", b"text/plain")
        return self.policy.encode()


def listen_https(reactor, res: resource.Resource, options):
    """Serve ``res`` over HTTPS on an ephemeral loopback port."""
    site = server.Site(res)
    site.noisy = False
    return reactor.listenSSL(0, site, options, interface="127.0.0.1")


def policy_text(mode: str, *mx: str, max_age: int = 86400) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"
