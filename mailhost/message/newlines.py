"""SMTP's bare CR/LF policy for DATA and BDAT (``smtp.bare_newline``).

RFC 5321 §2.3.8: a line ends in CRLF, and a bare CR or LF must not be sent. Servers
disagree on what one means, which is what SMTP smuggling (2023) exploits: a body with
``<CR>.<CR>`` followed by ``MAIL FROM:<ceo@…>`` is one message to a server that ends
DATA only at ``<CR><LF>.<CR><LF>`` (ours does) and two to one that also takes
``<CR>.<CR>``. So what we store or relay never carries one:

- ``"normalize"`` (the default, like Postfix's ``smtpd_forbid_bare_newline = normalize``,
  extended to bare CR): each bare CR or bare LF becomes CRLF before the message reaches
  its delivery targets; a smuggled ``<CR>.<CR>`` becomes a line holding a dot, stuffed
  on the way out.
- ``"reject"`` (Postfix's ``= reject``): the message is refused with ``550 5.5.2 Error:
  bare <LF> received`` (or ``<CR>``) once its end is read, and the session is closed,
  as Postfix does.

``BareNewlines.feed`` sees the unstuffed message in any chunking; a CR that ends one
chunk is judged by the first octet of the next, and ``finish`` judges a CR that ends
the message.
"""

from __future__ import annotations

import re
from typing import Literal

from mailhost.message.crlf import CRLFNormalizer

Policy = Literal["normalize", "reject"]
POLICIES: tuple[str, ...] = ("normalize", "reject")
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


class BareNewlines:
    """Applies one policy to one message's bytes, chunk by chunk."""

    __slots__ = ("policy", "found", "_norm", "_after_cr")

    def __init__(self, policy: Policy = "normalize") -> None:
        if policy not in POLICIES:
            raise ValueError(f"bare newline policy must be one of {POLICIES}, not {policy!r}")
        self.policy = policy
        #: ``"<CR>"`` or ``"<LF>"``: the first bare line end seen under "reject".
        self.found: str | None = None
        self._norm = CRLFNormalizer() if policy == "normalize" else None
        self._after_cr = False

    def feed(self, data: bytes) -> bytes:
        """The bytes to deliver: normalised, or (under "reject") as they came."""
        if self._norm is not None:
            return self._norm.feed(data)
        if self.found is None and data:
            self._check(data)
        return data

    def _check(self, data: bytes) -> None:
        if self._after_cr:
            if data[:1] != b"\n":
                self.found = "<CR>"
                return
            data = data[1:]
        self._after_cr = data[-1:] == b"\r"
        crlf = data.count(b"\r\n")
        if data.count(b"\n") == crlf and data.count(b"\r") - self._after_cr == crlf:
            return  # the common case: every line end is a CRLF
        first = _BARE.search(data, 0, len(data) - self._after_cr)
        if first is not None:
            self.found = "<CR>" if first.group() == b"\r" else "<LF>"

    def finish(self) -> None:
        """The message ended: a CR it ended with was bare."""
        if self._norm is None and self.found is None and self._after_cr:
            self.found = "<CR>"
