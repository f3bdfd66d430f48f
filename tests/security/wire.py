"""A raw line-oriented client socket that can be upgraded to TLS mid-stream.

The security tests need what well-behaved client libraries never do: several
commands in one TCP segment, exact control over what is sent before a handshake,
and a look at every reply line.
"""

from __future__ import annotations

import socket
import ssl
import time


class Wire:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0,
                 source: str | None = None) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data: bytes) -> None:
        """One ``sendall``: with TCP_NODELAY and small data, one segment."""
        self.sock.sendall(data)

    def line(self) -> bytes:
        """The next line (with its CRLF); b"" once the server has closed."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buf = self.buf, b""
                return rest
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def until(self, predicate, limit: int = 1000) -> list[bytes]:
        """Lines up to and including the first for which ``predicate(line)`` holds."""
        lines = []
        for _ in range(limit):
            line = self.line()
            lines.append(line)
            if not line or predicate(line):
                return lines
        raise AssertionError(f"no terminating line in {lines[-5:]}")

    def smtp_reply(self) -> list[bytes]:
        """One (possibly multi-line) SMTP reply."""
        return self.until(lambda ln: len(ln) < 4 or ln[3:4] != b"-")

    def tagged(self, tag: bytes) -> list[bytes]:
        """IMAP lines up to the tagged completion for ``tag``."""
        return self.until(lambda ln: ln.startswith(tag + b" "))

    def starttls(self, context: ssl.SSLContext, hostname: str = "mx.test") -> None:
        """Upgrade; anything the server sent after its go-ahead would be a bug."""
        assert self.buf == b"", f"server sent plaintext after the TLS go-ahead: {self.buf!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname=hostname)

    def quiet(self, wait: float = 0.3) -> bytes:
        """Whatever arrives within ``wait`` seconds (expected: nothing)."""
        if self.buf:
            data, self.buf = self.buf, b""
            return data
        self.sock.settimeout(wait)
        deadline = time.monotonic() + wait
        data = b""
        try:
            while time.monotonic() < deadline:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (TimeoutError, ssl.SSLWantReadError):
            pass
        finally:
            self.sock.settimeout(10.0)
        return data

    def read_to_close(self, limit: int = 1 << 20) -> bytes:
        data, self.buf = self.buf, b""
        while len(data) < limit:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            data += chunk
        return data

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
