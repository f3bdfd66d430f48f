"""POP3 framing for the fault interceptor: single- and multi-line responses and SASL."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from mailhost.testing.faults.interceptor import _FaultProtocol
from mailhost.testing.faults.registry import Fault

if TYPE_CHECKING:
    from mailhost.testing.faults.factory import FaultFactory


_POP3_MULTI_ALWAYS = frozenset({"CAPA", "RETR", "TOP"})
_POP3_MULTI_NOARG = frozenset({"LIST", "UIDL"})


class POP3FaultProtocol(_FaultProtocol):
    """POP3: one response per line, multi-line ones end with CRLF.CRLF; '+ ' is SASL."""

    protocol_name = "pop3"
    barriers = frozenset({"STLS", "AUTH", "_SASL"})

    def __init__(self, factory: FaultFactory, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self._pending: deque[bool] = deque([False])  # multi-line expected, per command
        self._out = b""
        self._in_multi = False

    def _fail_reply(self, fault: Fault, line: bytes | None) -> bytes:
        return f"-ERR {fault.message}\r\n".encode()

    def _quiet(self) -> bool:
        return not self._pending and not self._in_multi

    def _note_forwarded(self, line: bytes, verb: str | None) -> None:
        if verb is None and self._sasl:
            self._sasl = False
            self._barrier = True
            self._pending.append(False)
            return
        args = line.split()[1:]
        multi = verb in _POP3_MULTI_ALWAYS or (verb in _POP3_MULTI_NOARG and not args)
        self._pending.append(multi)

    def _scan_output(self, data: bytes) -> None:
        self._out += data
        while self._out:
            if self._in_multi:
                end = self._out.find(b"\r\n.\r\n")
                if end < 0:
                    self._out = self._out[-4:]
                    return
                self._out = self._out[end + 5:]
                self._in_multi = False
                self._answered()
                continue
            nl = self._out.find(b"\r\n")
            if nl < 0:
                return
            first, self._out = self._out[:nl], self._out[nl:]
            multi = self._pending.popleft() if self._pending else False
            if first.startswith(b"+OK") and multi:
                self._in_multi = True  # the terminator search starts at this CRLF
                continue
            self._out = self._out[2:]
            if first.startswith(b"+ ") or first == b"+":
                self._sasl = True
            self._answered()

    def _after_barrier(self) -> None:
        self._check_tls_upgrade()
