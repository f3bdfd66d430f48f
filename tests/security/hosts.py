"""A ``twistd -n mailhost`` with TLS on every protocol, for the security tests.

Plain listeners (STARTTLS/STLS) for smtp, submission, pop3 and imap, plus implicit
TLS for submission (465-style), pop3 (995) and imap (993), all with a throwaway
certificate that clients verify by using it as their CA file.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from mailhost.tls import write_selfsigned
from tests.mailhost_process import MailHostProcess, free_port

HOST = "127.0.0.1"
USER, PASSWORD = "alice@example.test", "alice-pw"
TLS_KINDS = ("submission", "pop3", "imap")


class TLSHost:
    """A started mail host with ``ports`` (plain) and ``tls_ports`` (implicit TLS)."""

    def __init__(self, workdir: str, extra: dict[str, dict[str, Any]] | None = None,
                 plaintext: str = "no") -> None:
        os.makedirs(workdir, exist_ok=True)
        self.cafile = os.path.join(workdir, "cert.pem")
        self.keyfile = os.path.join(workdir, "key.pem")
        write_selfsigned("mx.test", self.cafile, self.keyfile)
        self.plaintext = plaintext
        self.extra = extra or {}
        self.proc = MailHostProcess(workdir)
        self.tls_ports: dict[str, int] = {}

    def _configure(self) -> None:
        """Fresh free ports and the config file for them."""
        self.tls_ports = {k: free_port(HOST) for k in TLS_KINDS}
        sections: dict[str, dict[str, Any]] = {
            "server": {"allow_plaintext_auth": self.plaintext},
            "tls": {"cert": self.cafile, "key": self.keyfile},
            # Tests that do not test throttling must not be slowed by it, nor by the
            # delayed SMTP error replies (tests/security/test_harvest.py tests those).
            "auth": {"max_failures": 0},
            "smtp": {"error_sleep_time": 0},
        }
        for kind, port in self.tls_ports.items():
            sections.setdefault(kind, {})["listen_tls"] = [f"tcp:{port}:interface={HOST}"]
        for name, values in self.extra.items():
            sections.setdefault(name, {}).update(values)
        self.proc.extra = sections
        self.proc.ports = {}
        self.proc.configure()

    @property
    def ports(self) -> dict[str, int]:
        return self.proc.ports

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, attempts: int = 3) -> TLSHost:
        """Start on free ports; retry on fresh ports if another process took one."""
        for attempt in range(attempts):
            self._configure()
            try:
                self._start_once()
                return self
            except RuntimeError as e:
                self.proc.kill()
                if "Address already in use" not in str(e) + self.proc.log() or \
                        attempt == attempts - 1:
                    raise
        return self

    def _start_once(self) -> None:
        self.proc.start()
        deadline = time.monotonic() + 20
        for port in self.tls_ports.values():
            while True:
                if self.proc.proc.poll() is not None:
                    raise RuntimeError(f"mailhost exited\n{self.proc.log()}")
                try:
                    socket.create_connection((HOST, port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no TLS listener on {port}\n{self.proc.log()}") \
                            from None
                    time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc.proc is not None and self.proc.proc.poll() is None

    def log_text(self) -> str:
        with open(self.proc.log_path, errors="replace") as f:
            return f.read()

    def kill(self) -> None:
        self.proc.kill()
