"""The ``Authentication-Results:`` header field (RFC 8601) with our authserv-id.

Built with the ``authres`` package (its quoting and property syntax), one field per
message, SPF (MAIL FROM and HELO), every DKIM signature (with ``header.b`` of RFC
6008 so two signatures of one domain can be told apart), DMARC and ARC (RFC 8617
§10.2: ``arc=pass (i=N sealed by D) header.oldest-pass=0 smtp.remote-ip=...``). Before we add
ours, ``strip_ours`` removes every incoming field that claims our authserv-id
(RFC 8601 §5): otherwise a sender could forge our verdict.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import authres
import authres.arc
import authres.dmarc

from mailhost.mailauth.arc import ARCResult
from mailhost.mailauth.dkim import DKIMResult
from mailhost.mailauth.dmarc import DMARCResult
from mailhost.mailauth.spf import SPFResult

_Property = authres.AuthenticationResultProperty


def _reason(text: str) -> str | None:
    text = " ".join(text.split())
    return text.replace("\\", "").replace('"', "'")[:200] or None


def build(authserv_id: str, spf: Sequence[SPFResult] = (), dkim: Sequence[DKIMResult] | None = None,
          dmarc: DMARCResult | None = None,
          iprev: tuple[str, str, str | None] | None = None,
          arc: ARCResult | None = None) -> bytes:
    """The whole header field, ``Authentication-Results: …`` ending in CRLF.
    ``iprev``: (result, client address, its confirmed name) of RFC 8601 §3."""
    results: list[object] = []
    if iprev is not None:
        result, address, name = iprev
        results.append(authres.IPRevAuthenticationResult(
            result=result, policy_iprev=address, policy_iprev_comment=name or None))
    for s in spf:
        if s.identity == "helo":
            results.append(authres.SPFAuthenticationResult(
                result=s.result, smtp_helo=s.domain or None, reason=_reason(s.reason)))
        else:
            results.append(authres.SPFAuthenticationResult(
                result=s.result, smtp_mailfrom=s.sender or s.domain or None, reason=_reason(s.reason)))
    if dkim is not None:
        if not dkim:
            results.append(authres.DKIMAuthenticationResult(result="none"))
        for d in dkim:
            properties = [_Property("header", "b", d.b)] if d.b else []
            results.append(authres.DKIMAuthenticationResult(
                result=d.result, header_d=d.domain or None, header_s=d.selector or None,
                header_a=d.algorithm or None, header_i=d.identity or None,
                reason=_reason(d.reason), properties=properties))
    if dmarc is not None:
        results.append(authres.dmarc.DMARCAuthenticationResult(
            result=dmarc.result, header_from=dmarc.from_domain or None,
            policy=dmarc.policy if dmarc.result in ("pass", "fail") else None,
            reason=_reason(dmarc.reason)))
    if arc is not None:  # RFC 8617 §10.2: header.oldest-pass, smtp.remote-ip
        passed = arc.result == "pass"
        results.append(authres.arc.ARCAuthenticationResult(
            result=arc.result,
            result_comment=f"i={arc.instances} sealed by {arc.domain}" if passed else None,
            header_oldest_pass=str(arc.oldest_pass) if passed else None,
            smtp_remote_ip=arc.remote_ip or None, reason=_reason(arc.reason)))
    header = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results)
    text = str(header)
    if not results:
        text += "; none"  # RFC 8601 §2.2: no method was applied
    return _fold(text).encode("utf-8") + b"\r\n"


def _fold(text: str, width: int = 78) -> str:
    """Fold after the ';' between results, so lines stay short (RFC 5322 §2.2.3)."""
    parts = text.split("; ")
    return ";\r\n\t".join(parts) if len(text) > width else text


def claimed_authserv_id(value: str) -> str:
    """The authserv-id of an A-R field value (its first token, comments aside)."""
    try:
        return authres.AuthenticationResultsHeader.parse_value(value).authserv_id or ""
    except Exception:  # authres raises several kinds on hostile input
        stripped = re.sub(r"\([^)]*\)", " ", value)
        return stripped.strip().split(";", 1)[0].strip().split()[0] if stripped.strip() else ""


def strip_ours(header_block: bytes, authserv_id: str) -> bytes:
    """``header_block`` without the Authentication-Results fields that claim
    ``authserv_id`` (case-insensitively); every other field is kept byte for byte."""
    if b"authentication-results" not in header_block.lower():
        return header_block  # the usual case: nothing to look at line by line
    lines = re.split(rb"(?<=\n)", header_block)
    out: list[bytes] = []
    dropping = False
    ours = authserv_id.lower()
    for i, line in enumerate(lines):
        if line[:1] in (b" ", b"\t") and out is not None:
            if not dropping:
                out.append(line)
            continue
        dropping = False
        if line.lower().startswith(b"authentication-results:"):
            field = line
            for cont in lines[i + 1:]:
                if cont[:1] not in (b" ", b"\t"):
                    break
                field += cont
            value = field.split(b":", 1)[1].decode("utf-8", "replace")
            if claimed_authserv_id(re.sub(r"\r?\n", "", value)).lower() == ours:
                dropping = True
                continue
        out.append(line)
    return b"".join(out)
