"""Private instances of real milters for the tests, on loopback, started and
stopped by the test (by PID): rspamd's milter proxy and OpenDKIM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from tests.mailhost_process import free_port

RSPAMD_DISABLED = ("fuzzy_check", "rbl", "surbl", "asn", "phishing", "rspamd_update",
                   "url_redirector", "emails", "mx_check", "neural", "reputation", "ratelimit",
                   "greylist", "history_redis", "replies", "dcc", "bimi", "whitelist",
                   "mime_types", "multimap")


#: rspamd's compiled hyperscan databases (content-addressed), kept between tests and
#: runs: compiling its TLD list alone takes 10-30 s on a busy 2-core machine.
HS_CACHE = os.path.join(tempfile.gettempdir(), "mailhost-tests-rspamd-hs")


def _wait_port(port: int, proc: subprocess.Popen, log: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{_tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"not listening on {port} after {timeout} s:\n{_tail(log)}")


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-40:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Rspamd:
    """rspamd 3.x with only its milter proxy worker (scanning itself, no normal or
    controller worker), a private config, database and log directory, DNS from the
    test's own server (so nothing leaves the machine), no redis."""

    def __init__(self, root: str, dns: tuple[str, int]) -> None:
        if shutil.which("rspamd") is None:
            raise RuntimeError("rspamd is not installed (Debian package rspamd)")
        self.root = root
        self.port = free_port("127.0.0.1")
        self.log = os.path.join(root, "rspamd.log")
        conf = os.path.join(root, "conf")
        for d in ("local.d", "override.d"):
            os.makedirs(os.path.join(conf, d), exist_ok=True)
        for d in ("db", "run"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        os.makedirs(HS_CACHE, mode=0o700, exist_ok=True)
        files = {
            "override.d/worker-proxy.inc": f"""
bind_socket = "127.0.0.1:{self.port}";
milter = yes;
timeout = 60s;
count = 1;
upstream "local" {{ default = yes; self_scan = yes; }}
reject_message = "Spam message rejected";
""",
            "override.d/worker-normal.inc": "enabled = false;\n",
            "override.d/worker-controller.inc": "enabled = false;\n",
            "override.d/logging.inc": f'type = "file";\nfilename = "{self.log}";\nlevel = "info";\n',
            "local.d/options.inc": f"""
dns {{ nameserver = ["{dns[0]}:{dns[1]}"]; timeout = 1s; retransmits = 1; }}
local_addrs = [];
hs_cache_dir = "{HS_CACHE}";
""",
            "local.d/milter_headers.conf": """
use = ["x-spamd-result", "x-rspamd-server", "x-rspamd-queue-id", "x-spam-status"];
skip_local = false;
skip_authenticated = false;
""",
        }
        for module in RSPAMD_DISABLED:
            files[f"override.d/{module}.conf"] = "enabled = false;\n"
        for name, text in files.items():
            with open(os.path.join(conf, name), "w") as f:
                f.write(text)
        self.conf = conf
        self.proc: subprocess.Popen | None = None

    def start(self) -> Rspamd:
        """Start and wait until it listens (blocking: from a thread when the reactor
        must go on, as for the test's DNS server, see ``started``)."""
        argv = ["rspamd", "-f", "-c", "/etc/rspamd/rspamd.conf",
                f"--var=LOCAL_CONFDIR={self.conf}", f"--var=DBDIR={self.root}/db",
                f"--var=RUNDIR={self.root}/run", f"--var=LOGDIR={self.root}",
                "-p", f"{self.root}/run/rspamd.pid"]
        if os.geteuid() == 0:
            argv.append("--insecure")  # root in CI: workers stay root, in a private dir
        out = open(os.path.join(self.root, "stdout.log"), "wb")
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        out.close()
        _wait_port(self.port, self.proc, self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


def started(daemon):
    """``daemon.start()`` in a thread, the reactor running meanwhile (rspamd asks the
    test's DNS server while it starts), for a pytest fixture."""
    import pytest_twisted
    from twisted.internet import threads

    return pytest_twisted.blockon(threads.deferToThread(daemon.start))


class OpenDKIM:
    """OpenDKIM as a signing milter on a loopback port, for ``domain`` with one
    private key (``selector``), a private config, no syslog."""

    def __init__(self, root: str, domain: str, selector: str, key_pem: bytes,
                 internal_hosts: str = "127.0.0.0/8") -> None:
        if shutil.which("opendkim") is None:
            raise RuntimeError("opendkim is not installed (Debian package opendkim)")
        os.makedirs(root, exist_ok=True)
        self.root = root
        self.port = free_port("127.0.0.1")
        self.log = os.path.join(root, "opendkim.log")
        key = os.path.join(root, f"{selector}.private")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(key_pem)
        self.conf = os.path.join(root, "opendkim.conf")
        with open(self.conf, "w") as f:
            f.write(f"""Syslog no
Background no
Mode s
Domain {domain}
Selector {selector}
KeyFile {key}
RequireSafeKeys no
Canonicalization relaxed/relaxed
OversignHeaders From
InternalHosts {internal_hosts}
Socket inet:{self.port}@127.0.0.1
PidFile {root}/opendkim.pid
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> OpenDKIM:
        out = open(self.log, "wb")
        self.proc = subprocess.Popen(["opendkim", "-f", "-x", self.conf], stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        _wait_port(self.port, self.proc, self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
