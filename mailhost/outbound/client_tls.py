"""The relay client's TLS decisions, apart from its state machine (client.py).

The policy of a connection (``ClientPolicy.tls``: opportunistic, verify or none, and a
DANE or MTA-STS ``tls_verifier`` that may ``enforce``) decides what a server without
STARTTLS, a refused STARTTLS, a failed handshake or a certificate problem means. Each
function answers with a ``Verdict``: the RFC 8460 problem to report (``tls_problem``)
and the reason to give the session up, or none to carry on (in plaintext where TLS
was not had). The state machine only asks and obeys.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailhost.outbound.client_policy import ClientPolicy
from mailhost.outbound.jobs import failure_kind
from mailhost.outbound.replies import Reply
from mailhost.outbound.tlsrpt import STARTTLS_NOT_SUPPORTED, VALIDATION_FAILURE, TLSProblem


@dataclass(frozen=True)
class Verdict:
    """What to report (``problem``) and why to give up (``give_up``; empty: carry on)."""

    problem: TLSProblem | None = None
    give_up: str = ""


def without_starttls(p: ClientPolicy) -> Verdict:
    """The server does not offer STARTTLS, and the policy wanted TLS."""
    problem = None
    if p.tls_verifier is not None:
        problem = TLSProblem(STARTTLS_NOT_SUPPORTED, f"{p.mx_name} does not offer STARTTLS")
        if p.tls_verifier.enforce:
            return Verdict(problem, f"451 4.7.5 {p.mx_name} does not offer STARTTLS, which "
                                    "its domain's DANE or MTA-STS policy requires")
    if p.tls == "verify":
        return Verdict(problem, f"{p.mx_name} does not offer STARTTLS (TLS policy verify)")
    return Verdict(problem)


def starttls_refused(p: ClientPolicy, reply: Reply) -> Verdict:
    """The server answered STARTTLS with something other than 220."""
    if p.tls == "opportunistic" and failure_kind(reply.code):
        return Verdict()  # refused: carry on in plaintext
    if p.tls_verifier is not None and p.tls_verifier.enforce:
        return Verdict(
            TLSProblem(STARTTLS_NOT_SUPPORTED, f"STARTTLS refused by {p.mx_name}: {reply.text}"),
            f"451 4.7.5 STARTTLS refused by {p.mx_name}: {reply.text}",
        )
    return Verdict(None, f"STARTTLS refused by {p.mx_name}: {reply.text}")


def certificate_checked(p: ClientPolicy) -> Verdict:
    """After the handshake: the certificate check of DANE or MTA-STS, if any. A
    problem under enforcement gives the session up (only EHLO has been said over the
    connection, nothing of the mail)."""
    verifier = p.tls_verifier
    if verifier is None:
        return Verdict()
    problem = verifier.check()
    if problem is None or not verifier.enforce:
        return Verdict(problem)
    return Verdict(problem, f"451 4.7.5 TLS authentication of {p.mx_name} failed "
                            f"({problem.result_type}): {problem.detail}")


def handshake_failed(p: ClientPolicy, error: str,
                     problem: TLSProblem | None) -> tuple[str, TLSProblem | None]:
    """The connection ended during the handshake: the session's error (``error``, the
    text so far) and problem, as a verifier sees them (4.7.5 when it enforces)."""
    if p.tls_verifier is not None and problem is None:
        problem = TLSProblem(VALIDATION_FAILURE, error)
    if p.tls_verifier is not None and p.tls_verifier.enforce:
        error = f"451 4.7.5 {error}"
    return error, problem
