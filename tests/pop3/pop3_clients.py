"""Client helpers for the POP3 tests: a byte-exact raw client and a fetchmail runner."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess


class RawClient:
    """A byte-exact POP3 client over a plain socket (for what poplib hides or refuses)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, command: bytes) -> bytes:
        self.send(command + b"\r\n")
        return self.line()

    def multi(self) -> bytes:
        """The raw body of a multi-line response up to (not including) the '.' line."""
        while True:
            if self.buf.startswith(b".\r\n"):
                self.buf = self.buf[3:]
                return b""
            end = self.buf.find(b"\r\n.\r\n")
            if end >= 0:
                body, self.buf = self.buf[: end + 2], self.buf[end + 5 :]
                return body
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError(self.buf[-200:])
            self.buf += chunk

    def closed(self) -> bool:
        """True when the server has closed the connection (after whatever is buffered)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return False

    def starttls(self, cafile: str) -> None:
        ctx = ssl.create_default_context(cafile=cafile)
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")

    def close(self) -> None:
        self.sock.close()


def unstuff(body: bytes) -> bytes:
    """Undo RFC 1939 byte-stuffing of a multi-line body."""
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def fetchmail(home: str, port: int, keep: bool, user: str = "alice@example.test",
              password: str = "secret") -> subprocess.CompletedProcess:
    """One fetchmail run in ``home``: USER/PASS, UIDL tracking, every message appended to ``home/out``."""
    out = os.path.join(home, "out")
    rc = os.path.join(home, "fetchmailrc")
    with open(rc, "w") as f:
        f.write(
            f'set idfile "{home}/idfile"\n'
            f'poll 127.0.0.1 protocol pop3 port {port} uidl auth password\n'
            f'  user "{user}" there with password "{password}" is "x" here\n'
            f'  {"keep" if keep else "nokeep"} mda "/bin/sh -c \'cat >> {out}\'"\n'
            f'  sslproto "" no sslcertck\n'
        )
    os.chmod(rc, 0o600)
    env = {**os.environ, "HOME": home, "FETCHMAILHOME": home}
    argv = ["fetchmail", "-N", "--nosyslog", "-f", rc, "--pidfile", f"{home}/pid"]
    return subprocess.run(argv, env=env, capture_output=True, timeout=60)
