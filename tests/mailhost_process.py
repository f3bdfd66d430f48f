"""Run a real ``twistd -n mailhost`` as a subprocess for end-to-end tests.

Tests talk to it over loopback with real clients, exactly as a user would. Ports are
picked free at start; the process is killed by PID at the end, never by name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from mailhost.auth.hashing import hash_password
from mailhost.auth.passwd import PasswdEntry, PasswdFile
from tests.ports import free_port

PROTOCOLS = ("smtp", "submission", "pop3", "imap")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class _PortTaken(RuntimeError):
    """twistd could not bind a port picked for it (another test took it meanwhile)."""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def write_config(path: str, sections: dict[str, dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for name, values in sections.items():
            f.write(f"[{name}]\n")
            for key, value in values.items():
                f.write(f"{key} = {_toml(value)}\n")
            f.write("\n")


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    """Resident memory of a process in KiB (VmRSS, or VmHWM for the peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise LookupError(field_name)


def children_of(pid: int) -> list[int]:
    """Pids of the live children of ``pid`` (read from /proc, one pass)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid) and fields[0] != "Z":
            out.append(int(name))
    return sorted(out)


@dataclass
class MailHostProcess:
    """A running (or stopped) ``twistd mailhost`` and everything needed to reach it."""

    workdir: str
    host: str = "127.0.0.1"
    domains: list[str] = field(default_factory=lambda: ["example.test"])
    users: dict[str, str] = field(default_factory=lambda: {
        "alice@example.test": "alice-pw", "bob@example.test": "bob-pw"})
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    #: twistd runs under this umask, not the test runner's, so file modes are the same
    #: on every machine (022 is the usual one; the store must not depend on it).
    umask: int = 0o022
    proc: subprocess.Popen | None = None
    # Run as this user/group, as production does: twistd binds the listeners as root,
    # then drops to --uid/--gid before the services start. The workdir is chowned to
    # them at start, so the server can write its data and log.
    uid: int | None = None
    gid: int | None = None
    #: twistd's own options, before ``mailhost`` (``--logfile=...``).
    twistd_args: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> str:
        return os.path.join(self.workdir, "data")

    @property
    def config_path(self) -> str:
        return os.path.join(self.workdir, "mailhost.toml")

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, "twistd.log")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def maildir(self, user: str, folder: str = "INBOX") -> str:
        local, _, domain = user.partition("@")
        root = os.path.join(self.data_dir, "mail", domain, local)
        return root if folder == "INBOX" else os.path.join(root, "." + folder)

    def configure(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        if not self.ports:
            self.ports = {p: free_port(self.host) for p in PROTOCOLS}
            self._auto_ports = True
        sections: dict[str, dict[str, Any]] = {
            "server": {"hostname": "mx.test", "domains": self.domains,
                       "data_dir": self.data_dir, "allow_plaintext_auth": "loopback"},
            "auth": {"create_postmaster": False},
            "outbound": {"scan_interval": 1.0},
        }
        for proto in PROTOCOLS:
            sections.setdefault(proto, {})["listen"] = [
                f"tcp:{self.ports[proto]}:interface={self.host}"]
        for name, values in self.extra.items():
            sections.setdefault(name, {}).update(values)
        write_config(self.config_path, sections)
        passwd = PasswdFile(os.path.join(self.data_dir, "passwd"))
        entries = dict(passwd.entries())
        for user, password in self.users.items():
            if user not in entries:
                entries[user] = PasswdEntry(user, hash_password(password))
        passwd.save(entries)

    def start(self, timeout: float = 30.0) -> MailHostProcess:
        """Start twistd and wait until every listener answers. Ports picked by
        ``free_port`` can be taken by a parallel test before twistd binds them; then
        (and only for ports we picked) new ones are picked and twistd started again."""
        if not os.path.exists(self.config_path):
            self.configure()
        for attempt in range(3):
            try:
                return self._start(timeout)
            except _PortTaken:
                if not getattr(self, "_auto_ports", False) or attempt == 2:
                    raise
                self.ports = {}
                self.configure()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> MailHostProcess:
        log_start = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        self._log_start = log_start
        self._adopted_before = 0
        log = open(self.log_path, "ab")
        privileges = []
        if self.uid is not None:
            gid = self.gid if self.gid is not None else self.uid
            privileges = [f"--uid={self.uid}", f"--gid={gid}"]
            subprocess.run(["chown", "-R", f"{self.uid}:{gid}", self.workdir], check=True)
        self.proc = subprocess.Popen(
            [sys.executable, TWISTD, "-n", "--pidfile=", *privileges, *self.twistd_args,
             "mailhost",
             "--config", self.config_path],
            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            umask=self.umask,
        )
        log.close()
        deadline = time.monotonic() + timeout
        pending = dict(self.ports)
        while pending:
            if self.proc.poll() is not None:
                text = self.log()
                error = _PortTaken if "Address already in use" in text[log_start:] else RuntimeError
                raise error(f"mailhost exited with {self.proc.returncode}:\n{text}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mailhost did not listen on {pending}:\n{self.log()}")
            for name, port in list(pending.items()):
                try:
                    socket.create_connection((self.host, port), timeout=0.5).close()
                    del pending[name]
                except OSError:
                    pass
            if pending:
                time.sleep(0.1)
        return self

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-6000:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def worker_pids(self) -> list[int]:
        """The pids of this server's worker processes (``server.workers > 1``): the
        children of twistd, found by their parent pid."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return children_of(self.proc.pid)

    def wait_workers(self, count: int, started: int | None = None,
                     timeout: float = 60.0) -> list[int]:
        """Wait until ``count`` workers run and ``started`` (default: all) more have
        adopted their listeners since the last wait (a worker's IMAP listener, the
        last one, logged "starting on"); their pids."""
        started_wanted = count if started is None else started
        deadline = time.monotonic() + timeout
        needle = f"(LimitingFactory) starting on {self.ports['imap']}"
        while True:
            pids = self.worker_pids()
            adopted = self.log_since_start().count(needle)
            if len(pids) == count and adopted >= self._adopted_before + started_wanted:
                self._adopted_before = adopted
                return pids
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} workers not ready ({pids}):\n{self.log()}")
            time.sleep(0.1)

    def log_since_start(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                return f.read().decode(errors="replace")
        except (FileNotFoundError, AttributeError):
            return ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            workers = self.worker_pids()
            self.proc.kill()
            for pid in workers:  # by pid: a worker must not outlive the test
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(10)
