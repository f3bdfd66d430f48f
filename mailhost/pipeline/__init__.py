"""The stages of the message pipeline, and the chain the config names.

``mailhost.message.stage`` defines the seam (``IStage``, ``Pipeline``); this package
holds the stages, one small module each, as maddy's ``check/`` and ``modify/``:

============== =========================================================
``spf``         SPF of MAIL FROM and HELO, started at MAIL FROM
``dkim``        DKIM verification of every signature
``dmarc``       DMARC, and its policy (``pipeline.dmarc_mode``)
``arc``         ARC chain verification (RFC 8617)
``auth_results`` one Authentication-Results field; forged ones removed
``dkim_sign``   DKIM signature for mail of our domains that we relay
``arc_seal``    ARC set on mail a local alias forwards to another domain
``milter``      the milters of ``pipeline.milters`` (rspamd, OpenDKIM, ...)
============== =========================================================

``service.py`` calls ``build_pipeline`` with the frozen ``PipelineSettings`` and the
collaborators (the DNS lookup); SMTP gets the ``Pipeline`` and knows nothing of what
is in it. Only ``service.py`` imports this package.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailhost.dns.interfaces import IDNSLookup
from mailhost.mailauth.dkim_keys import SigningKey, load_key
from mailhost.message.stage import IStage, Pipeline
from mailhost.milter.client import MilterSpec, MilterSpecError

STAGES = ("spf", "dkim", "dmarc", "arc", "auth_results", "dkim_sign", "arc_seal", "milter")
_CHECKS = ("spf", "dkim", "dmarc", "arc")


class PipelineConfigError(ValueError):
    """A ``[pipeline]`` setting that cannot work; the message names the key."""


@dataclass(frozen=True)
class PipelineSettings:
    """What the pipeline reads: ``[pipeline]``."""

    stages: tuple[str, ...] = ()
    authserv_id: str = ""
    dmarc_mode: str = "enforce"
    #: (domain, (selector, ...)) for ``dkim_sign``.
    dkim_selectors: tuple[tuple[str, tuple[str, ...]], ...] = ()
    dkim_dir: str = "dkim"
    #: Messages too large for memory wait here for the stages' verdict.
    spool_dir: str | None = None
    #: For ``milter``: the milters in order, and our name in their ``j`` macro.
    milters: tuple[MilterSpec, ...] = ()
    hostname: str = ""
    #: For ``arc_seal``: (domain, selector) of its RSA key; ("", "") the first RSA
    #: key of ``dkim_selectors``.
    arc_selector: tuple[str, str] = ("", "")
    #: ARC sealers whose vouching for a DMARC pass the ``dmarc`` stage accepts.
    arc_trusted_sealers: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, config: object) -> PipelineSettings:
        p = config.pipeline  # type: ignore[attr-defined]
        server = config.server  # type: ignore[attr-defined]
        stages = tuple(s.strip().lower() for s in p.stages)
        for name in stages:
            if name not in STAGES:
                raise PipelineConfigError(
                    f"pipeline.stages: unknown stage {name!r} (known: {', '.join(STAGES)})")
        if len(set(stages)) != len(stages):
            raise PipelineConfigError("pipeline.stages: a stage is listed twice")
        if "dmarc" in stages:
            for before in ("spf", "dkim"):
                if before in stages and stages.index(before) > stages.index("dmarc"):
                    raise PipelineConfigError(f"pipeline.stages: {before!r} must come before 'dmarc'")
        if "auth_results" in stages:
            late = [c for c in _CHECKS if c in stages
                    and stages.index(c) > stages.index("auth_results")]
            if late:
                raise PipelineConfigError(
                    f"pipeline.stages: 'auth_results' must come after {', '.join(late)}")
        _check_arc_order(stages)
        trusted = frozenset(d.strip().lower().rstrip(".") for d in p.arc_trusted_sealers)
        if trusted and "dmarc" in stages and ("arc" not in stages
                                              or stages.index("arc") > stages.index("dmarc")):
            raise PipelineConfigError(
                "pipeline.arc_trusted_sealers: 'arc' must come before 'dmarc'")
        arc_selector = ("", "")
        if p.arc_selector:
            domain, sep, selector = p.arc_selector.partition(":")
            if not sep or not domain.strip() or not selector.strip():
                raise PipelineConfigError(
                    f"pipeline.arc_selector: {p.arc_selector!r} is not '<domain>:<selector>'")
            arc_selector = (domain.strip().lower().rstrip("."), selector.strip())
        selectors = tuple(sorted(
            (domain.strip().lower().rstrip("."),
             tuple(s for s in value.replace(",", " ").split() if s))
            for domain, value in p.dkim_selectors.items()))
        try:
            milters = tuple(MilterSpec.parse(name, text, p.milter_default_action)
                            for name, text in p.milters.items())
        except MilterSpecError as e:
            raise PipelineConfigError(f"pipeline.milters: {e}") from None
        if "milter" in stages and not milters:
            raise PipelineConfigError("pipeline.stages: 'milter' needs pipeline.milters")
        return cls(stages, p.authserv_id or server.hostname, p.dmarc_mode, selectors,
                   config.data_path("dkim"), config.data_path("spool"),  # type: ignore[attr-defined]
                   milters, server.hostname, arc_selector=arc_selector,
                   arc_trusted_sealers=trusted)

    def signing_keys(self, load: Callable[[str, str, str], SigningKey] = load_key) -> list[SigningKey]:
        """Every configured key, read from ``<data_dir>/dkim/<domain>/<selector>.pem``
        (as ``mailhost dkim keygen`` writes them)."""
        keys = []
        for domain, selectors in self.dkim_selectors:
            for selector in selectors:
                path = os.path.join(self.dkim_dir, domain, f"{selector}.pem")
                try:
                    keys.append(load(domain, selector, path))
                except (OSError, ValueError) as e:
                    raise PipelineConfigError(
                        f"pipeline.dkim_selectors: {domain} {selector}: {e}") from None
        return keys

    def arc_key(self, load: Callable[[str, str, str], SigningKey] = load_key) -> SigningKey:
        """The RSA key ``arc_seal`` seals with (RFC 8617 allows only rsa-sha256)."""
        domain, selector = self.arc_selector
        if domain:
            candidates = [(domain, selector)]
        else:
            candidates = [(d, s) for d, sels in self.dkim_selectors for s in sels]
        for d, s in candidates:
            path = os.path.join(self.dkim_dir, d, f"{s}.pem")
            try:
                key = load(d, s, path)
            except (OSError, ValueError) as e:
                raise PipelineConfigError(f"pipeline.arc_selector: {d}:{s}: {e}") from None
            if key.algorithm == "rsa":
                return key
        raise PipelineConfigError("pipeline.stages: 'arc_seal' needs an RSA key "
                                  "(pipeline.arc_selector or pipeline.dkim_selectors)")


def _check_arc_order(stages: tuple[str, ...]) -> None:
    """``arc_seal`` vouches for the chain ``arc`` verified and for our results, and
    signs the header fields as they leave: after ``arc`` and ``auth_results`` and
    ``dkim_sign``. (A milter that changes the message after it breaks the seal; that
    is the site's order to choose, as with ``dkim_sign``.)"""
    if "arc_seal" not in stages:
        return
    for before in ("arc", "spf", "dkim", "dmarc", "auth_results", "dkim_sign"):
        if before in stages and stages.index(before) > stages.index("arc_seal"):
            raise PipelineConfigError(f"pipeline.stages: {before!r} must come before 'arc_seal'")
    if "arc" not in stages:
        raise PipelineConfigError("pipeline.stages: 'arc_seal' needs 'arc' (its cv=) before it")


def build_pipeline(settings: PipelineSettings, lookup: IDNSLookup,
                   reactor: object = None,
                   keys: Sequence[SigningKey] | None = None,
                   arc_key: SigningKey | None = None) -> Pipeline:
    """The configured stages, in order, over ``lookup``. ``keys`` replaces the key
    files for ``dkim_sign``, ``arc_key`` the one of ``arc_seal``."""
    stages: list[IStage] = []
    for name in settings.stages:
        if name == "spf":
            from mailhost.mailauth.spf import SPFChecker
            from mailhost.pipeline.spf import SPFStage

            stages.append(SPFStage(SPFChecker(lookup, reactor=reactor)))
        elif name == "dkim":
            from mailhost.mailauth.dkim import DKIMVerifier
            from mailhost.pipeline.dkim_verify import DKIMVerifyStage

            stages.append(DKIMVerifyStage(DKIMVerifier(lookup)))
        elif name == "dmarc":
            from mailhost.mailauth.dmarc import DMARCChecker
            from mailhost.pipeline.dmarc import DMARCStage

            stages.append(DMARCStage(DMARCChecker(lookup), settings.dmarc_mode,
                                     settings.arc_trusted_sealers))
        elif name == "auth_results":
            from mailhost.pipeline.auth_results import AuthResultsStage

            stages.append(AuthResultsStage(settings.authserv_id))
        elif name == "dkim_sign":
            from mailhost.mailauth.dkim import DKIMSigner
            from mailhost.pipeline.dkim_sign import DKIMSignStage

            stages.append(DKIMSignStage(DKIMSigner(
                keys if keys is not None else settings.signing_keys())))
        elif name == "arc":
            from mailhost.mailauth.arc import ARCVerifier
            from mailhost.pipeline.arc_verify import ARCVerifyStage

            stages.append(ARCVerifyStage(ARCVerifier(lookup)))
        elif name == "arc_seal":
            from mailhost.mailauth.arc import ARCSealer
            from mailhost.pipeline.arc_seal import ARCSealStage

            stages.append(ARCSealStage(ARCSealer(arc_key or settings.arc_key()),
                                       settings.authserv_id))
        elif name == "milter":
            from mailhost.milter.client import MilterClient
            from mailhost.pipeline.milter import MilterStage

            stages.append(MilterStage([MilterClient(spec, settings.hostname, reactor=reactor,
                                                    spool_dir=settings.spool_dir)
                                       for spec in settings.milters]))
    if stages and settings.spool_dir:
        os.makedirs(settings.spool_dir, mode=0o700, exist_ok=True)
    return Pipeline(stages, spool_dir=settings.spool_dir)


__all__ = ["STAGES", "PipelineConfigError", "PipelineSettings", "build_pipeline"]
