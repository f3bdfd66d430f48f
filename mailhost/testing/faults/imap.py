"""IMAP framing for the fault interceptor: tagged completions, literals and continuations."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from mailhost.testing.faults.interceptor import MAX_LINE, _FaultProtocol
from mailhost.testing.faults.registry import Fault

if TYPE_CHECKING:
    from mailhost.testing.faults.factory import FaultFactory

_LITERAL = re.compile(rb"\{(\d+)(\+?)\}\r?\n\Z")


class IMAPFaultProtocol(_FaultProtocol):
    """IMAP: tagged completions, literals both ways, AUTHENTICATE/IDLE continuations."""

    protocol_name = "imap"
    barriers = frozenset({"STARTTLS", "AUTHENTICATE", "IDLE", "_SYNC_LITERAL", "_CONT"})

    def __init__(self, factory: FaultFactory, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self._tags: list[bytes] = []  # forwarded commands not yet completed
        self._current: bytes | None = None  # tag of the command whose line continues
        self._cont_verb: str | None = None  # AUTHENTICATE/IDLE waiting for client lines
        self._cont_line = False  # the next client line answers a '+' continuation
        self._sync_literal = 0  # a synchronizing literal announced, waiting for '+'
        self._swallow = False  # skip the rest of a failed command
        self._drop_at_end = False  # drop_after a command with literals: cut once it is all in
        self._out = b""
        self._out_literal = 0
        self._last_plus = False

    def _verb(self, line: bytes) -> str | None:
        if self._cont_line or self._current is not None:
            return None
        parts = line.split(None, 3)
        if len(parts) < 2:
            return None
        verb = parts[1].decode("ascii", "replace").upper()
        if verb == "UID" and len(parts) > 2:
            verb = "UID " + parts[2].decode("ascii", "replace").upper()
        return verb

    def _fail_reply(self, fault: Fault, line: bytes | None) -> bytes:
        tag = line.split(None, 1)[0].decode("ascii", "replace") if line and line.split() else "*"
        return f"{tag} NO {fault.message}\r\n".encode()

    def _quiet(self) -> bool:
        return not self._tags and self._current is None and not self._cont_verb

    def _literal_after(self, line: bytes) -> tuple[int, bool] | None:
        m = _LITERAL.search(line)
        if m is None:
            return None
        return int(m.group(1)), bool(m.group(2))

    def _note_forwarded(self, line: bytes, verb: str | None) -> None:
        if self._cont_line:
            self._cont_line = False
            if self._cont_verb == "AUTHENTICATE":
                self._barrier = True  # another challenge or the completion follows
            elif self._cont_verb == "IDLE":
                self._barrier = True  # DONE: wait for the tagged completion
            return
        if verb is not None:
            tag = line.split(None, 1)[0]
            self._tags.append(tag)
            self._current = tag
            if verb in ("AUTHENTICATE", "IDLE"):
                self._cont_verb = verb
        literal = self._literal_after(line)
        if literal is None:
            self._current = None
            return
        size, plus = literal
        if plus:
            self._raw_left = size
        else:
            self._sync_literal = size
            self._barrier = True

    def _forward_command(self, line: bytes, verb: str | None, drop: Fault | None = None) -> None:
        if drop is not None and self._literal_after(line) is not None:
            # The command runs only once its literals are in: pass them on, cut after.
            drop.hits += 1
            self._drop_at_end = True
            drop = None
        super()._forward_command(line, verb, drop)
        if self._drop_at_end and self._current is None and not self._gone:
            self._drop_at_end = False
            self._drop()

    def _failed(self, line: bytes, verb: str) -> None:
        literal = self._literal_after(line)
        if literal is not None and literal[1]:
            # LITERAL+: the client sends the literal anyway; swallow the whole command.
            self._swallow = True
            self._raw_left = literal[0]

    def _forward(self, data: bytes) -> None:
        if self._swallow:
            return
        super()._forward(data)

    def _line(self, line: bytes) -> None:
        if self._swallow:
            literal = self._literal_after(line)
            if literal is not None and literal[1]:
                self._raw_left = literal[0]
            else:
                self._swallow = False
            return
        super()._line(line)

    def _scan_output(self, data: bytes) -> None:
        self._out += data
        while self._out:
            if self._out_literal:
                skip = min(self._out_literal, len(self._out))
                self._out = self._out[skip:]
                self._out_literal -= skip
                continue
            nl = self._out.find(b"\r\n")
            if nl < 0:
                if len(self._out) > MAX_LINE:
                    self._out = b""
                return
            line, self._out = self._out[: nl + 2], self._out[nl + 2:]
            m = _LITERAL.search(line)
            if m is not None:
                self._out_literal = int(m.group(1))
                continue
            if line.startswith(b"+"):
                self._on_continuation()
                continue
            parts = line.split(None, 2)
            if len(parts) >= 2 and parts[0] in self._tags \
                    and parts[1].upper() in (b"OK", b"NO", b"BAD"):
                self._tags.remove(parts[0])
                if parts[0] == self._current:
                    self._current = None
                    self._sync_literal = 0
                    self._drop_at_end = False  # refused before its literal: nothing to cut
                if not self._tags:
                    self._cont_verb = None
                self._answered()

    def _on_continuation(self) -> None:
        if self._sync_literal:
            self._raw_left, self._sync_literal = self._sync_literal, 0
        elif self._cont_verb:
            self._cont_line = True
        self._answered()

    def _after_barrier(self) -> None:
        self._check_tls_upgrade()
