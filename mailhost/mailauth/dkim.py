"""DKIM signing and verification (RFC 6376, RFC 8463 Ed25519) on dkimpy, streamed.

dkimpy does the cryptography and the header canonicalization; this module gives it
what it cannot get for itself without blocking or without holding the message:

- **DNS**: before dkimpy verifies a signature we fetch ``<s>._domainkey.<d>`` TXT
  through ``IDNSLookup`` (async, cached) and hand dkimpy a ``dnsfunc`` that returns
  that answer. A DNS failure never reaches dkimpy: it is ``temperror`` here.
- **The body**: ``BodyHasher`` computes bh= as the body streams past
  (``mailhost.mailauth.dkim_body``), and dkimpy only ever sees the header block. For
  signing we build the tag list as ``dkim.DKIM.sign`` does and call its
  ``gen_header`` (header hash and signature). For verifying we check bh= ourselves
  and give dkimpy the signature's tags without ``bh``, which its
  ``verify_sig_process`` then skips (it checks the body only ``if b'bh' in sig``);
  the tests that a changed body gives ``fail`` guard this against a dkimpy change.

Both are transactions shaped like ``IDeliveryTarget``'s: ``start(header_block)``,
``update(chunk)`` for each body chunk, then ``finish()``. Memory is bounded by the
header block and ``dkim_body.MAX_HELD``, whatever the body size.

Signing policy (RFC 6376 §5.4, RFC 8463 §3): relaxed/relaxed; the header fields of
dkimpy's recommended list that are present; ``From`` signed once more than it occurs
("oversigned") so no second From can be added; every key of the domain signs
(Ed25519 and RSA side by side, RFC 8463 §4; two selectors during a rotation).

Verification results per signature use RFC 8601's words: ``pass``, ``fail`` (body
hash or signature does not verify), ``permerror`` (malformed signature, no key, bad
key, rsa-sha1 per RFC 8301), ``temperror`` (DNS failed), ``neutral`` is not used.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import dkim
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.crypto import HASH_ALGORITHMS
from dkim.util import InvalidTagValueList, parse_tag_value
from twisted.logger import Logger

from mailhost.dns.interfaces import DNSNameInvalid, DNSTemporaryError, IDNSLookup
from mailhost.mailauth.dkim_body import BodyHasher
from mailhost.mailauth.dkim_keys import SigningKey
from mailhost.mailauth.textcache import ParsedByText

log = Logger()

MAX_SIGNATURES = 10  # verified per message; more are permerror (a cheap DoS otherwise)


#: dkimpy's ``RE_BTAG`` (the b= value, blanked before hashing), the same language
#: written without its nested optional FWS groups: ``(?:(?:\s*\r?\n)?\s+)?`` is
#: any run of white space, so each base64 octet is ``\s*[...]``. dkimpy's takes
#: ~140 us on a 2048-bit signature (backtracking at every octet), this ~5 us;
#: ``tests/mailauth/test_parse_caches.py`` checks them equal (hypothesis).
RE_BTAG = re.compile(rb"([;\s]b\s*=)(?:\s*[a-zA-Z0-9+/=])*(?:\r?\n\Z)?")


def _hash_headers(hasher: Any, policy: CanonicalizationPolicy,
                  headers: list[tuple[bytes, bytes]], include: Sequence[bytes],
                  sigheader: tuple[bytes, bytes]) -> None:
    """``dkim.hash_headers`` (1.1.x) line for line, with ``RE_BTAG`` above."""
    sign_headers = dkim.select_headers(headers, include)
    cheaders = policy.canonicalize_headers([(sigheader[0], RE_BTAG.sub(b"\\1", sigheader[1]))])
    for x, y in sign_headers + [(x, y.rstrip()) for x, y in cheaders]:
        hasher.update(x)
        hasher.update(b":")
        hasher.update(y)


def _as_header_message(header_block: bytes) -> bytes:
    """The header block as a body-less message for dkimpy."""
    if header_block.endswith(b"\n\r\n") or header_block.endswith(b"\n\n"):
        return header_block
    if not header_block.endswith(b"\n"):
        header_block += b"\r\n"
    return header_block + b"\r\n"


def _ed25519_key(private: bytes) -> object:
    import nacl.encoding
    import nacl.signing

    return nacl.signing.SigningKey(private, encoder=nacl.encoding.Base64Encoder)


def private_key(key: SigningKey) -> object:
    """The key's signing object: PyNaCl's for Ed25519 (what dkimpy calls), OpenSSL's
    (``cryptography``) for RSA. Parse once per key: ``DKIMSigner`` keeps them."""
    if key.algorithm == "ed25519":
        return _ed25519_key(key.private)
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(key.private, password=None)


def _gen_header_rsa(d: dkim.DKIM, fields: list[tuple[bytes, bytes]], include: Sequence[bytes],
                    policy: CanonicalizationPolicy, name: bytes, pk: object) -> bytes:
    """``dkim.DKIM.gen_header`` for RSA with the signature made by OpenSSL.

    dkimpy signs RSA with Python's ``pow`` (8 ms of CPU per RSA-2048 signature, the
    whole cost of signing a small message; OpenSSL takes about 1 ms). Line for line
    dkimpy's ``gen_header`` (1.1.x), on the module functions it uses itself, with only
    the signing call changed; OpenDKIM verifying our RSA signatures
    (``tests/mailauth/test_opendkim_interop.py``) guards it against a dkimpy change.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

    header_value = b"; ".join(b"=".join(x) for x in fields)
    header_value = dkim.fold(header_value, namelen=len(name), linesep=b"\r\n")
    header_value = RE_BTAG.sub(b"\\1", header_value)
    h = dkim.HashThrough(d.hasher(), False)
    headers = policy.canonicalize_headers(_signed_fields(d.headers, include))
    _hash_headers(h, policy, headers, include, (name, b" " + header_value))
    signature = cast(rsa.RSAPrivateKey, pk).sign(h.digest(), padding.PKCS1v15(),
                                                 utils.Prehashed(hashes.SHA256()))
    fields = [(k, base64.b64encode(signature) if k == b"b" else v) for k, v in fields]
    value = b"; ".join(b"=".join(x) for x in fields) + b"\r\n"
    return dkim.fold(value, namelen=len(name), linesep=b"\r\n")


def _verify_rsa(d: dkim.DKIM, sig: dict[bytes, bytes], include: list[bytes],
                header: tuple[bytes, bytes], key: object) -> bool:
    """dkimpy's ``verify_sig_process`` for an RSA key, the body hash left out (ours)
    and the signature checked by OpenSSL.

    dkimpy verifies RSA in Python (``pow`` and its integer/bytes conversions: 0.4 ms
    of the 0.5 ms that verifying one signature costs); the header hash below is its
    own code, line for line (1.1.x), except that only the fields ``h=`` names are
    canonicalized (dkimpy canonicalizes them all and then picks; the pick is the
    same, see ``_signed_fields``). ``key`` is the OpenSSL public key, built once per
    key record (``KeyCache``). The OpenDKIM interop test and the changed-header and
    changed-body tests guard it against a dkimpy change.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

    try:
        policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError as e:
        raise dkim.MessageFormatError(f"invalid c= value: {e.args[0]}") from None
    algorithm = {b"rsa-sha256": hashes.SHA256(), b"rsa-sha1": hashes.SHA1()}.get(sig[b"a"])
    if algorithm is None:
        raise dkim.ValidationError(f"unknown signature algorithm: {sig[b'a']!r}")
    if b"from" in include:
        include.append(b"from")  # as dkimpy (its bug#644046): a second From breaks it
    h = dkim.HashThrough(HASH_ALGORITHMS[sig[b"a"]](), False)
    _hash_headers(h, policy, policy.canonicalize_headers(_signed_fields(d.headers, include)),
                  include, header)
    try:
        signature = base64.b64decode(re.sub(rb"\s+", b"", sig[b"b"]))
    except ValueError as e:
        raise dkim.MessageFormatError(str(e)) from None
    try:
        cast(rsa.RSAPublicKey, key).verify(signature, h.digest(), padding.PKCS1v15(),
                                           utils.Prehashed(algorithm))
    except InvalidSignature:
        return False
    except (ValueError, TypeError) as e:
        raise dkim.KeyFormatError(f"unusable key: {e}") from None
    return True


def _signed_fields(headers: list[tuple[bytes, bytes]],
                   include: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    """The header fields whose names ``h=`` lists, in order: ``dkim.select_headers``
    picks by name from the bottom, so leaving the others out changes nothing it
    picks, and spares canonicalizing fields no signature covers (Received, ...)."""
    wanted = set(include)
    return [field for field in headers if field[0].lower() in wanted]


@dataclass(frozen=True)
class _Key:
    """One key record, parsed: dkimpy's ``evaluate_pk`` answer, and for RSA the
    OpenSSL public key."""

    pk: object
    bits: int
    ktag: bytes
    tlsrpt: bool
    rsa: object | None


class KeyCache:
    """Parsed DKIM key records (base64, ASN.1, an RSA public key) by name and record
    text (``textcache.ParsedByText``)."""

    def __init__(self, size: int = 1024) -> None:
        self._keys: ParsedByText[tuple[str, bytes], _Key] = ParsedByText(size)

    def get(self, name: str, txt: bytes) -> _Key:
        """The parsed key; dkimpy's exceptions (and ValueError etc.) propagate."""
        return self._keys.get((name, txt), lambda: _parse_key(name, txt))


def _parse_key(name: str, txt: bytes) -> _Key:
    pk, bits, ktag, tlsrpt = dkim.evaluate_pk(name.encode(), txt)
    public = None
    if ktag == b"rsa" and not tlsrpt:
        from cryptography.hazmat.primitives.asymmetric import rsa

        try:
            public = rsa.RSAPublicNumbers(pk["publicExponent"], pk["modulus"]).public_key()
        except (ValueError, TypeError) as e:
            raise dkim.KeyFormatError(f"unusable key: {e}") from None
    return _Key(pk, bits, ktag, tlsrpt, public)


class DKIMSigning:
    """One message being signed with ``keys``; see the module docstring."""

    def __init__(self, keys: Sequence[SigningKey], header_block: bytes,
                 clock: Callable[[], float] = time.time,
                 private: Callable[[SigningKey], object] = private_key) -> None:
        self.keys = list(keys)
        self.header_block = header_block
        self.clock = clock
        self.private = private
        self._hasher = BodyHasher("relaxed", "sha256")

    def update(self, chunk: bytes) -> None:
        self._hasher.update(chunk)

    def finish(self) -> bytes:
        """The DKIM-Signature header fields, each ending in CRLF, to put on top."""
        bh = base64.b64encode(self._hasher.digest())
        out = []
        for key in self.keys:
            out.append(self._sign_one(key, bh))
        return b"".join(out)

    def _sign_one(self, key: SigningKey, bh: bytes) -> bytes:
        algorithm = key.signature_algorithm.encode()
        d = dkim.DKIM(_as_header_message(self.header_block), signature_algorithm=algorithm,
                      linesep=b"\r\n")
        include = tuple(h.lower() for h in d.default_sign_headers())
        if b"from" not in include:
            raise dkim.ParameterError("the message has no From header field to sign")
        policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
        d.hasher = HASH_ALGORITHMS[algorithm]
        domain = key.domain.encode("ascii")
        fields = [
            (b"v", b"1"),
            (b"a", algorithm),
            (b"c", b"relaxed/relaxed"),
            (b"d", domain),
            (b"q", b"dns/txt"),
            (b"s", key.selector.encode("ascii")),
            (b"t", str(int(self.clock())).encode("ascii")),
            (b"h", b" : ".join(include)),
            (b"bh", bh),
            # As dkimpy: a placeholder that makes b= fold onto a line of its own.
            (b"b", b"0" * 60),
        ]
        pk = self.private(key)
        if key.algorithm == "ed25519":
            value = d.gen_header(fields, include, policy, b"DKIM-Signature", pk)
        else:
            value = _gen_header_rsa(d, fields, include, policy, b"DKIM-Signature", pk)
        return b"DKIM-Signature: " + value


class DKIMSigner:
    """Signs mail of the domains it has keys for.

    ``keys``: every active key; a domain with two keys (Ed25519 and RSA, or two
    selectors while rotating) gets two signatures."""

    def __init__(self, keys: Iterable[SigningKey], clock: Callable[[], float] = time.time) -> None:
        self._keys: dict[str, list[SigningKey]] = {}
        self._private: dict[tuple[str, str, str], object] = {}
        for key in keys:
            self._keys.setdefault(key.domain.lower(), []).append(key)
            self._private[key.domain.lower(), key.selector, key.algorithm] = private_key(key)
        self.clock = clock

    def _private_key(self, key: SigningKey) -> object:
        found = self._private.get((key.domain.lower(), key.selector, key.algorithm))
        return found if found is not None else private_key(key)

    def keys_for(self, domain: str) -> list[SigningKey]:
        return list(self._keys.get(domain.lower().rstrip("."), []))

    def start(self, header_block: bytes, domain: str) -> DKIMSigning | None:
        """A signing transaction for mail of ``domain``, None if we have no key for it."""
        keys = self.keys_for(domain)
        return DKIMSigning(keys, header_block, self.clock, self._private_key) if keys else None

    def sign(self, message: bytes, domain: str) -> bytes:
        """The signature header fields for a whole message in memory (small messages,
        tests); streaming callers use ``start``."""
        from mailhost.mailauth.dkim_body import split_header_block

        head, body = split_header_block(message)
        signing = self.start(head or message, domain)
        if signing is None:
            return b""
        signing.update(body if head else b"")
        return signing.finish()


@dataclass(frozen=True)
class DKIMResult:
    """The verdict on one DKIM-Signature, for Authentication-Results and DMARC."""

    result: str  # pass, fail, permerror, temperror
    domain: str = ""  # d=
    selector: str = ""  # s=
    algorithm: str = ""  # a=
    identity: str = ""  # i=
    b: str = ""  # the first octets of b=, header.b of RFC 6008
    reason: str = ""
    key_bits: int = 0


def _lenient_tags(value: bytes) -> dict[bytes, bytes]:
    """Tags of a malformed signature, for naming d= and s= in its permerror."""
    try:
        return parse_tag_value(value)
    except (InvalidTagValueList, ValueError, IndexError):
        tags: dict[bytes, bytes] = {}
        for part in value.split(b";"):
            k, sep, v = part.partition(b"=")
            if sep:
                tags.setdefault(k.strip(), v.strip())
        return tags


def _text(value: bytes | None) -> str:
    return (value or b"").decode("ascii", "replace")


@dataclass
class _Pending:
    index: int
    tags: dict[bytes, bytes]
    include: list[bytes] = field(default_factory=list)
    hasher: BodyHasher | None = None
    early: DKIMResult | None = None


class DKIMVerification:
    """Every DKIM-Signature of one message, verified as the body streams past."""

    def __init__(self, lookup: IDNSLookup, header_block: bytes, minkey: int = 1024,
                 max_signatures: int = MAX_SIGNATURES, keys: KeyCache | None = None) -> None:
        self.lookup = lookup
        self.minkey = minkey
        self.keys = keys if keys is not None else KeyCache()
        self._message = _as_header_message(header_block)
        self._pending: list[_Pending] = []
        self._hashers: dict[tuple[str, str, int | None], BodyHasher] = {}
        self._error: str = ""
        self._signature_headers: list[tuple[bytes, bytes]] = []
        try:
            self._dkim = dkim.DKIM(self._message, minkey=minkey)
        except dkim.DKIMException as e:
            self._error = f"unparsable header: {e}"
            self._signature_headers = [(b"dkim-signature", v) for v in re.findall(
                rb"(?im)^dkim-signature:(.*(?:\r?\n[ \t].*)*)", self._message)]
            return
        self._signature_headers = [(n, v) for n, v in self._dkim.headers
                                   if n.lower() == b"dkim-signature"]
        for index, (_name, value) in enumerate(self._signature_headers):
            if index >= max_signatures:
                self._pending.append(_Pending(index, _lenient_tags(value), early=self._result(
                    "permerror", _lenient_tags(value), f"more than {max_signatures} signatures")))
                continue
            self._pending.append(self._prepare(index, value))

    def _result(self, result: str, tags: dict[bytes, bytes], reason: str = "",
                bits: int = 0) -> DKIMResult:
        b = re.sub(rb"\s+", b"", tags.get(b"b", b""))
        return DKIMResult(result, _text(tags.get(b"d")).lower(), _text(tags.get(b"s")),
                          _text(tags.get(b"a")), _text(tags.get(b"i")), _text(b[:8]),
                          reason, bits)

    def _prepare(self, index: int, value: bytes) -> _Pending:
        try:
            prep = self._dkim.verify_headerprep(index)
        except (dkim.DKIMException, KeyError, ValueError, IndexError, TypeError) as e:
            tags = _lenient_tags(value)
            return _Pending(index, tags, early=self._result("permerror", tags, str(e)))
        sig, include, _headers = prep
        if sig[b"a"] == b"rsa-sha1":
            return _Pending(index, sig, early=self._result(
                "permerror", sig, "rsa-sha1 is not accepted (RFC 8301)"))
        try:
            policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
            limit = int(sig[b"l"]) if b"l" in sig else None
        except (InvalidCanonicalizationPolicyError, ValueError) as e:
            return _Pending(index, sig, early=self._result("permerror", sig, f"bad tag: {e}"))
        body = _text(policy.body_algorithm.name)
        key = (body, "sha256", limit)
        hasher = self._hashers.get(key)
        if hasher is None:
            hasher = self._hashers[key] = BodyHasher(body, "sha256", limit)
        return _Pending(index, sig, include, hasher)

    @property
    def signed(self) -> bool:
        """True if the message carries any DKIM-Signature."""
        return bool(self._signature_headers)

    def update(self, chunk: bytes) -> None:
        for hasher in self._hashers.values():
            hasher.update(chunk)

    async def finish(self) -> list[DKIMResult]:
        """One result per DKIM-Signature, in header order (empty if unsigned)."""
        if self._error:
            return [self._result("permerror", _lenient_tags(v), self._error)
                    for _n, v in self._signature_headers]
        results = []
        for p in self._pending:
            if p.early is not None:
                results.append(p.early)
                continue
            try:
                results.append(await self._verify(p))
            except Exception as e:  # a stage never crashes on hostile input
                log.failure("DKIM verification of signature {index} failed unexpectedly",
                            index=p.index)
                results.append(self._result("permerror", p.tags, f"internal: {e}"))
        return results

    async def _verify(self, p: _Pending) -> DKIMResult:
        sig = p.tags
        assert p.hasher is not None
        try:
            claimed = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]), validate=True)
        except ValueError:
            return self._result("permerror", sig, "bh= is not base64")
        if p.hasher.digest() != claimed:
            return self._result("fail", sig, "body hash did not verify")
        if b"l" in sig and int(sig[b"l"]) > p.hasher.length:
            return self._result("permerror", sig, "l= is longer than the body")
        name = f"{_text(sig[b's'])}._domainkey.{_text(sig[b'd'])}"
        try:
            answer = await self.lookup.lookup(name, "TXT")
        except DNSTemporaryError as e:
            return self._result("temperror", sig, f"key lookup: {e}")
        except DNSNameInvalid:
            return self._result("permerror", sig, f"bad key name {name!r}")
        records = [r for r in answer.records if r.lstrip().startswith(b"v=DKIM1")] \
            or list(answer.records)
        if len(records) != 1:
            return self._result("permerror", sig, "no key" if not records else "several keys")
        txt = records[0]
        try:
            key = self.keys.get(name, txt)
        except (dkim.DKIMException, ValueError, IndexError, TypeError) as e:
            return self._result("permerror", sig, f"bad key: {e or 'unusable'}")
        bits = key.bits
        if bits and bits < self.minkey and key.ktag == b"rsa":
            return self._result("permerror", sig, f"key of {bits} bits is too small", bits)

        def dnsfunc(_name: bytes, timeout: float = 5) -> bytes:
            return txt

        without_bh = {k: v for k, v in sig.items() if k != b"bh"}
        header = self._signature_headers[p.index]
        try:
            if key.rsa is not None:
                ok = _verify_rsa(self._dkim, without_bh, list(p.include), header, key.rsa)
            else:
                ok = self._dkim.verify_sig(without_bh, list(p.include), header, dnsfunc)
        except dkim.DKIMException as e:
            return self._result("permerror", sig, str(e), bits)
        if ok:
            return self._result("pass", sig, "", bits)
        return self._result("fail", sig, "signature did not verify", bits)


class DKIMVerifier:
    """Starts a ``DKIMVerification`` per message, with the injected DNS lookup."""

    def __init__(self, lookup: IDNSLookup, minkey: int = 1024) -> None:
        self.lookup = lookup
        self.minkey = minkey
        self.keys = KeyCache()

    def start(self, header_block: bytes) -> DKIMVerification:
        return DKIMVerification(self.lookup, header_block, self.minkey, keys=self.keys)

    async def verify(self, message: bytes) -> list[DKIMResult]:
        """Every signature of a whole message in memory (tests, small messages)."""
        from mailhost.mailauth.dkim_body import split_header_block

        head, body = split_header_block(message)
        v = self.start(head or message)
        v.update(body if head else b"")
        return await v.finish()
