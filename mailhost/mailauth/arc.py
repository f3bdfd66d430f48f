"""ARC (RFC 8617): verifying the chain of a message, and sealing it, on dkimpy.

dkimpy's ``ARC`` class knows the chain: which header fields form instance i, what
each ARC-Message-Signature (AMS) and ARC-Seal (AS) covers, the rules of ``cv=``.
As for DKIM (``mailhost.mailauth.dkim``), it is given only what it cannot get for
itself without blocking the reactor or holding the message:

- **DNS**: every ``<s>._domainkey.<d>`` named by an AMS or AS is fetched through
  ``IDNSLookup`` first (async, cached, concurrently); dkimpy's ``dnsfunc`` then only
  reads those answers. A key whose lookup failed makes its signature fail, and the
  reason says ``temperror`` (RFC 8617 registers only pass/fail/none for ``arc``).
- **The body**: each AMS's bh= is computed as the body streams past
  (``dkim_body.BodyHasher``, one per distinct (c=, a=, l=)), and dkimpy sees only the
  header block. ``_StreamedARC.verify_sig_process`` checks bh= against ours and hands
  dkimpy the signature without ``bh``, which its ``verify_sig_process`` then skips
  (as ``dkim.py`` does for DKIM); the changed-body tests guard this. Memory is the
  header block plus at most 50 hashers' held line (``MAX_HELD``), whatever the body.
- **Sealing** is dkimpy's ``ARC.sign`` (1.1.x) line for line, with two changes: the
  body hash is ours (streamed) and the AAR is our Authentication-Results for this
  message (dkimpy would re-parse it out of the header block). RSA signs with OpenSSL
  as ``dkim.py`` does. dkimpy's ``arcverify`` command on a message we sealed
  (``tests/mailauth/test_arc.py``) guards it against a dkimpy change.

Limits (RFC 8617 §4.2.1, §5.1.1): instances 1..50; a message with more ARC header
fields than 50 sets have, or an instance outside 1..50, is ``fail`` before dkimpy is
asked. Anything dkimpy raises on a hostile chain is ``fail`` too, never a crash.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dkim
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import HASH_ALGORITHMS
from twisted.internet import defer
from twisted.logger import Logger

from mailhost.dns.interfaces import DNSNameInvalid, DNSTemporaryError, IDNSLookup
from mailhost.mailauth.dkim import _as_header_message, _gen_header_rsa, _lenient_tags, private_key
from mailhost.mailauth.dkim_body import HASHES, BodyHasher
from mailhost.mailauth.dkim_keys import SigningKey

log = Logger()

MAX_INSTANCES = 50  # RFC 8617 §4.2.1
ARC_FIELDS = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")
_FIELD = re.compile(rb"(?im)^(arc-seal|arc-message-signature|arc-authentication-results)[ \t]*:"
                    rb"(.*(?:\r?\n[ \t].*)*)")
_INSTANCE = dkim.ARC.INSTANCE_RE


@dataclass(frozen=True)
class ARCResult:
    """The chain's verdict, for Authentication-Results and the seal's ``cv=``."""

    result: str  # pass, fail, none
    instances: int = 0  # N, the highest i= (0: no chain)
    oldest_pass: int = 0  # RFC 8617 §5.2 "oldest-pass": 0 when every AMS validates
    domain: str = ""  # d= of the newest ARC-Seal (who sealed last)
    reason: str = ""
    remote_ip: str = ""  # the client that gave us the message (smtp.remote-ip)
    #: The ``dmarc=`` result the newest sealer recorded in its AAR ("" if none): what
    #: a receiver that trusts that sealer may use (``pipeline.arc_trusted_sealers``).
    sealer_dmarc: str = ""


def _body_key(tags: dict[bytes, bytes]) -> tuple[str, str, int | None] | None:
    """(body canonicalization, hash, l=) an AMS's bh= is over; None if unusable."""
    try:
        policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"relaxed/relaxed"))
        limit = int(tags[b"l"]) if b"l" in tags else None
    except Exception:
        return None
    hash_name = {b"rsa-sha256": "sha256", b"ed25519-sha256": "sha256",
                 b"rsa-sha1": "sha1"}.get(tags.get(b"a", b"").strip())
    if hash_name is None or hash_name not in HASHES or (limit is not None and limit < 0):
        return None
    return policy.body_algorithm.name.decode("ascii").lower(), hash_name, limit


class _StreamedARC(dkim.ARC):
    """dkimpy's ARC with each AMS's bh= checked against our streamed body hashes."""

    def __init__(self, message: bytes, hashers: dict[tuple[str, str, int | None], BodyHasher],
                 minkey: int) -> None:
        super().__init__(message, minkey=minkey)
        self.hashers = hashers

    def verify_sig_process(self, sig: dict[bytes, bytes], include_headers: list[bytes],
                           sig_header: tuple[bytes, bytes], dnsfunc: Any) -> bool:
        if b"bh" in sig:
            key = _body_key(sig)
            hasher = self.hashers.get(key) if key is not None else None
            if hasher is None:
                raise dkim.ValidationError("unusable a=, c= or l= in ARC-Message-Signature")
            try:
                claimed = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]), validate=True)
            except ValueError:
                raise dkim.MessageFormatError("bh= is not base64") from None
            if hasher.digest() != claimed:
                raise dkim.ValidationError("body hash mismatch")
            sig = {k: v for k, v in sig.items() if k != b"bh"}
        return bool(super().verify_sig_process(sig, include_headers, sig_header, dnsfunc))


class _Unavailable(dkim.DnsTimeoutError):
    pass


class ARCVerification:
    """The ARC chain of one message, verified as the body streams past."""

    def __init__(self, lookup: IDNSLookup, header_block: bytes, minkey: int = 1024) -> None:
        self.lookup = lookup
        self.minkey = minkey
        self._message = _as_header_message(header_block)
        self._hashers: dict[tuple[str, str, int | None], BodyHasher] = {}
        self._early: ARCResult | None = None
        self._keys: list[str] = []
        self._domain = ""
        fields = [(name.lower(), value) for name, value in _FIELD.findall(self._message)]
        if not fields:
            self._early = ARCResult("none")
            return
        if len(fields) > 3 * MAX_INSTANCES:
            self._early = ARCResult("fail", reason=f"more than {MAX_INSTANCES} ARC sets")
            return
        newest = 0
        for name, value in fields:
            m = _INSTANCE.search(value)
            instance = int(m.group(1)) if m is not None and len(m.group(1)) < 4 else -1
            if not 1 <= instance <= MAX_INSTANCES:
                self._early = ARCResult("fail", reason="ARC instance missing or outside 1..50")
                return
            if name == b"arc-authentication-results":
                continue
            tags = _lenient_tags(value)
            selector, domain = tags.get(b"s", b"").strip(), tags.get(b"d", b"").strip()
            if selector and domain:
                key = f"{selector.decode('ascii', 'replace')}._domainkey." \
                      f"{domain.decode('ascii', 'replace')}".lower().rstrip(".")
                if key not in self._keys:
                    self._keys.append(key)
            if name == b"arc-seal" and instance >= newest:
                newest, self._domain = instance, domain.decode("ascii", "replace").lower()
            if name == b"arc-message-signature":
                body = _body_key(tags)
                if body is not None and body not in self._hashers:
                    self._hashers[body] = BodyHasher(*body)
        try:
            self._arc: _StreamedARC | None = _StreamedARC(self._message, self._hashers, minkey)
        except Exception as e:  # dkimpy's parser on a hostile header block
            self._early = ARCResult("fail", reason=f"unparsable header: {e}")

    def update(self, chunk: bytes) -> None:
        for hasher in self._hashers.values():
            hasher.update(chunk)

    async def finish(self) -> ARCResult:
        if self._early is not None:
            return self._early
        answers: dict[str, bytes | None] = {}
        failed: list[str] = []

        async def fetch(name: str) -> None:
            try:
                answer = await self.lookup.lookup(name, "TXT")
            except DNSTemporaryError:
                failed.append(name)
                return
            except DNSNameInvalid:
                answers[name] = None
                return
            records = [r for r in answer.records if r.lstrip().startswith(b"v=DKIM1")] \
                or list(answer.records)
            answers[name] = records[0] if len(records) == 1 else None

        await defer.gatherResults([defer.Deferred.fromCoroutine(fetch(n)) for n in self._keys])

        def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
            key = name.decode("ascii", "replace").lower().rstrip(".")
            if key in failed:
                raise _Unavailable(f"temperror: no answer for {key}")
            return answers.get(key)

        try:
            return self._verify(dnsfunc, failed)
        except Exception as e:  # a stage never crashes on hostile input
            log.failure("ARC verification failed unexpectedly")
            return ARCResult("fail", reason=f"internal: {e}")

    def _verify(self, dnsfunc: Callable[..., bytes | None], failed: list[str]) -> ARCResult:
        assert self._arc is not None
        cv, data, reason = self._arc.verify(dnsfunc=dnsfunc)
        instances = max((r["instance"] for r in data), default=0)
        if cv != dkim.CV_Pass:
            if failed:
                reason = f"{reason} (temperror: key lookup for {', '.join(failed)})"
            return ARCResult("fail", instances, 0, self._domain, reason)
        oldest = 0
        for r in data:  # newest first
            if not r["ams-valid"]:
                oldest = r["instance"] + 1
                break
        return ARCResult("pass", instances, oldest, self._domain,
                         sealer_dmarc=_dmarc_of(data[0].get("aar-value", b"")))


def _dmarc_of(aar: bytes) -> str:
    """The ``dmarc=`` result in an ARC-Authentication-Results value, comments aside."""
    text = re.sub(rb"\([^)]*\)", b" ", aar).decode("ascii", "replace")
    m = re.search(r"(?:^|;)\s*dmarc\s*=\s*([A-Za-z]+)", text)
    return m.group(1).lower() if m else ""


class ARCVerifier:
    """Starts an ``ARCVerification`` per message, with the injected DNS lookup."""

    def __init__(self, lookup: IDNSLookup, minkey: int = 1024) -> None:
        self.lookup = lookup
        self.minkey = minkey

    def start(self, header_block: bytes) -> ARCVerification:
        return ARCVerification(self.lookup, header_block, self.minkey)

    async def verify(self, message: bytes) -> ARCResult:
        """The chain of a whole message in memory (tests, small messages)."""
        from mailhost.mailauth.dkim_body import split_header_block

        head, body = split_header_block(message)
        v = self.start(head or message)
        v.update(body if head else b"")
        return await v.finish()


class ARCSealing:
    """One message being sealed: the AMS body hash streams, the set is made at the end."""

    def __init__(self, key: SigningKey, pk: object, clock: Callable[[], float]) -> None:
        self.key = key
        self.pk = pk
        self.clock = clock
        self._hasher = BodyHasher("relaxed", "sha256")

    def update(self, chunk: bytes) -> None:
        self._hasher.update(chunk)

    def finish(self, header_block: bytes, authserv_id: str, results: bytes, cv: str) -> bytes:
        """The ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results,
        each ending in CRLF, in that order, to put on top of ``header_block``).

        ``results``: our Authentication-Results for this message after the
        authserv-id (``method=result ...; ...``); ``cv``: the chain's verification
        (``none``, ``pass``, ``fail``). b"" when the chain is already at i=50."""
        return seal(header_block, self.key, self.pk, authserv_id, results, cv,
                    base64.b64encode(self._hasher.digest()), int(self.clock()))


def seal(header_block: bytes, key: SigningKey, pk: object, authserv_id: str, results: bytes,
         cv: str, bodyhash: bytes, timestamp: int) -> bytes:
    """dkimpy's ``ARC.sign`` (1.1.x), line for line, with the AAR and bh= given."""
    d = dkim.ARC(_as_header_message(header_block), signature_algorithm=key.signature_algorithm
                 .encode(), linesep=b"\r\n")
    d.add_should_not((b"authentication-results",))
    max_instance, arc_headers_w_instance = d.sorted_arc_headers()
    instance = max_instance + 1 if arc_headers_w_instance else 1
    if instance > MAX_INSTANCES:
        return b""
    status = cv.encode("ascii")
    if instance == 1:
        status = dkim.CV_None  # RFC 8617 §5.1.2: the first set says none
    elif status == dkim.CV_None:
        status = dkim.CV_Fail  # a chain we could not verify is not one we vouch for
    include_headers = tuple(x.lower() for x in d.default_sign_headers())
    if b"from" not in include_headers:
        raise dkim.ParameterError("the message has no From header field to sign")
    arc_headers = [y for _x, y in arc_headers_w_instance] if status != dkim.CV_Fail else []
    canon_policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    aar_value = b"i=%d; " % instance + authserv_id.encode() + b";" + b"\r\n " + \
        results.strip() + b"\r\n"
    new_arc_set = [b"ARC-Authentication-Results: " + aar_value]
    arc_headers.insert(0, (b"ARC-Authentication-Results", aar_value))
    d.headers = canon_policy.canonicalize_headers(arc_headers[:1]) + d.headers
    d.hasher = HASH_ALGORITHMS[d.signature_algorithm]
    stamp = str(timestamp).encode("ascii")
    domain, selector = key.domain.encode("ascii"), key.selector.encode("ascii")

    def gen(fields: list[tuple[bytes, bytes]], include: list[bytes] | tuple[bytes, ...],
            name: bytes) -> bytes:
        if key.algorithm == "ed25519":
            return bytes(d.gen_header(fields, include, canon_policy, name, pk))
        return _gen_header_rsa(d, fields, include, canon_policy, name, pk)

    ams_fields = [
        (b"i", str(instance).encode("ascii")),
        (b"a", d.signature_algorithm),
        (b"c", b"relaxed/relaxed"),
        (b"d", domain),
        (b"s", selector),
        (b"t", stamp),
        (b"h", b" : ".join(include_headers)),
        (b"bh", bodyhash),
        (b"b", b"0" * 60),
    ]
    res = gen(ams_fields, include_headers, b"ARC-Message-Signature")
    new_arc_set.append(b"ARC-Message-Signature: " + res)
    arc_headers.insert(0, (b"ARC-Message-Signature", res))
    d.headers = canon_policy.canonicalize_headers(arc_headers[:1]) + d.headers
    as_fields = [
        (b"i", str(instance).encode("ascii")),
        (b"cv", status),
        (b"a", d.signature_algorithm),
        (b"d", domain),
        (b"s", selector),
        (b"t", stamp),
        (b"b", b"0" * 60),
    ]
    as_include_headers = [x[0].lower() for x in arc_headers]
    as_include_headers.reverse()
    if status == dkim.CV_Fail:
        d.headers.reverse()  # as dkimpy: only our own set is sealed
    res = gen(as_fields, as_include_headers, b"ARC-Seal")
    new_arc_set.append(b"ARC-Seal: " + res)
    new_arc_set.reverse()
    return b"".join(new_arc_set)


class ARCSealer:
    """Seals with the key of our sealing domain (one key: the first configured)."""

    def __init__(self, key: SigningKey, clock: Callable[[], float] = time.time) -> None:
        self.key = key
        self.clock = clock
        self._pk = private_key(key)

    def start(self) -> ARCSealing:
        return ARCSealing(self.key, self._pk, self.clock)
