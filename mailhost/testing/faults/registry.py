"""The fault script: what to inject, for which command, and how often.

``Fault`` is one scripted reply, delay or cut; ``FaultSet`` is the per-protocol API
(``host.smtp.fail(...)``) that appends to the host's one shared list; ``_find`` picks
the live fault for a command line. Nothing here knows protocol framing or sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Pseudo-command naming the server greeting (for ``delay``, ``fail`` and ``drop_after``).
GREETING = "GREETING"


@dataclass
class Fault:
    """One scripted fault. ``times=None`` means every time; ``hits`` counts uses."""

    protocol: str  # "smtp", "pop3" or "imap"
    action: str  # "fail", "delay" or "drop_after"
    command: str  # upper-case verb, or GREETING
    code: int | None = None
    message: str = ""
    match: str | None = None
    times: int | None = 1
    seconds: float = 0.0
    hits: int = field(default=0, compare=False)

    def matches(self, verb: str, line: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if not _verb_matches(self.command, verb):
            return False
        return self.match is None or self.match.lower() in line.lower()

    def describe(self) -> str:
        what = f"{self.protocol} {self.action} {self.command}"
        if self.action == "fail":
            what += f" -> {self.code or ''} {self.message}".rstrip()
        if self.action == "delay":
            what += f" {self.seconds:g}s"
        if self.match:
            what += f" (match {self.match!r})"
        left = "always" if self.times is None else f"{self.times - self.hits} left"
        return f"{what}, {left}"


def _verb_matches(wanted: str, verb: str) -> bool:
    """"FETCH" matches FETCH and UID FETCH; "UID FETCH" only the latter."""
    return wanted == verb or (verb.startswith("UID ") and verb[4:] == wanted)


# Commands whose answer is the authentication verdict, per protocol.
AUTH_COMMANDS = {"smtp": ("AUTH",), "pop3": ("PASS", "AUTH", "APOP"),
                 "imap": ("LOGIN", "AUTHENTICATE")}

# Default replies for ``fail`` when no code/message is given.
_DEFAULT_FAIL = {"smtp": (451, "4.3.0 Requested action aborted: injected fault"),
                 "pop3": (None, "injected fault"), "imap": (None, "injected fault")}
_AUTH_FAIL = {"smtp": (535, "5.7.8 Authentication credentials invalid"),
              "pop3": (None, "[AUTH] Authentication failed"),
              "imap": (None, "[AUTHENTICATIONFAILED] Authentication failed")}


class FaultSet:
    """The scripted faults of one protocol (``host.smtp``, ``host.pop3``, ``host.imap``).

    Every method is for the reactor thread; ``SyncMailHost`` proxies them.
    """

    def __init__(self, protocol: str, registry: list[Fault]) -> None:
        self.protocol = protocol
        self._registry = registry

    def _add(self, fault: Fault) -> Fault:
        self._registry.append(fault)
        return fault

    def fail(self, command: str, code: int | None = None, message: str | None = None,
             match: str | None = None, times: int | None = 1) -> Fault:
        """Answer ``command`` with an error instead of passing it on.

        SMTP: ``code message`` (default 451). POP3: ``-ERR message``. IMAP:
        ``<tag> NO message`` (``code`` is ignored for POP3 and IMAP). With
        ``command="greeting"`` the greeting is replaced and the connection closed.
        ``match`` is a case-insensitive substring of the command line.
        """
        dcode, dmsg = _DEFAULT_FAIL[self.protocol]
        return self._add(Fault(self.protocol, "fail", command.strip().upper(),
                               code if code is not None else dcode,
                               message if message is not None else dmsg, match, times))

    def delay(self, command: str, seconds: float, match: str | None = None,
              times: int | None = 1) -> Fault:
        """Hold ``command`` (or ``"greeting"``) for ``seconds`` before passing it on."""
        return self._add(Fault(self.protocol, "delay", command.strip().upper(),
                               match=match, times=times, seconds=seconds))

    def drop_after(self, command: str, match: str | None = None,
                   times: int | None = 1) -> Fault:
        """Pass ``command`` on, then cut the connection before the client sees the reply.

        For SMTP ``DATA`` (and ``BDAT``) the client sends the whole message (chunk)
        first; the connection is cut instead of the final reply, so nothing is stored.
        An IMAP command with literals is cut once they are all in, so it runs.
        ``"greeting"`` cuts the connection as soon as it is made.
        """
        return self._add(Fault(self.protocol, "drop_after", command.strip().upper(),
                               match=match, times=times))

    def reject_auth(self, times: int | None = None) -> list[Fault]:
        """Refuse every login attempt (SMTP 535, POP3 -ERR [AUTH], IMAP NO)."""
        code, message = _AUTH_FAIL[self.protocol]
        return [self._add(Fault(self.protocol, "fail", verb, code, message, None, times))
                for verb in AUTH_COMMANDS[self.protocol]]

    def faults(self) -> list[Fault]:
        return [f for f in self._registry if f.protocol == self.protocol]

    def clear(self) -> None:
        self._registry[:] = [f for f in self._registry if f.protocol != self.protocol]


def _find(registry: list[Fault], protocol: str, verb: str, line: str,
          actions: tuple[str, ...] = ("delay", "fail", "drop_after")) -> Fault | None:
    """The first live fault for this command, delays first (a delayed command can
    still fail once its delay is over)."""
    for action in actions:
        for fault in registry:
            if fault.protocol == protocol and fault.action == action \
                    and fault.matches(verb, line):
                return fault
    return None
