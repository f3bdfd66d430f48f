"""The two servers of the body benchmarks (``pop3_retr.py``, ``imap_fetch.py``):
mailhost (``twistd -n mailhost``) and Dovecot (``dovecot -F -c <throwaway conf>``,
passwd-file userdb, ``mail_location=maildir:``) serving copies of the same Maildirs,
plaintext and over implicit TLS (RFC 8314) with one self-signed RSA-2048 certificate,
and the server CPU read from /proc.

The corpus: ``small@`` (1,000 messages of 50 KiB) and ``big@`` (one 100 MiB message),
with lines that begin with '.' so dot-stuffing is exercised. Both servers are stopped
by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.mailhost_process import MailHostProcess, free_port  # noqa: E402

MiB = 1024 * 1024
USERS = {"small@example.test": "small-pw", "big@example.test": "big-pw"}
LINES = [(b".stuffed %04d " % i if i % 4 == 0 else b"line %04d     " % i) + b"z" * 48 + b"\r\n"
         for i in range(16)]
BLOCK = b"".join(LINES)  # 1 KiB


def message(size: int, n: int) -> bytes:
    head = b"From: bench@example.test\r\nSubject: bench %d\r\nMessage-ID: <%d@bench>\r\n\r\n" % (
        n, n)
    return head + BLOCK * ((size - len(head)) // len(BLOCK))


def write_maildir(root: str, messages: list[bytes] | None = None, big: int = 0) -> None:
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    now = int(time.time())
    for n, data in enumerate(messages or []):
        with open(os.path.join(root, "cur", f"{now}.M{n}P1Q{n}.bench:2,"), "wb") as f:
            f.write(data)
    if big:
        with open(os.path.join(root, "cur", f"{now}.M0P2Q0.bench:2,"), "wb") as f:
            f.write(message(len(BLOCK) * 4, 0))
            for _ in range(big // len(BLOCK)):
                f.write(BLOCK)


def connect(port: int, tls: bool = False) -> socket.socket:
    """A client socket to ``port`` on loopback, over implicit TLS (RFC 8314) if ``tls``:
    the client's default context without verification (the bench's own self-signed
    certificate)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock)
    return sock


def make_certificate(work: str) -> tuple[str, str]:
    """A self-signed RSA-2048 certificate and key for both servers' TLS listeners."""
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.chmod(key, 0o644)
    return cert, key


def mailhost_with_corpus(work: str, protocol: str, cert: str,
                         key: str) -> tuple[MailHostProcess, int]:
    """A configured (not yet started) mailhost over the corpus, and the port of its
    ``<protocol>.listen_tls``."""
    mh = MailHostProcess(os.path.join(work, "mailhost"), users=dict(USERS),
                         extra={"tls": {"cert": cert, "key": key}})
    tls_port = free_port()
    mh.extra[protocol] = {"listen_tls": [f"tcp:{tls_port}:interface=127.0.0.1"]}
    os.makedirs(mh.workdir, exist_ok=True)
    mh.configure()
    print("writing maildirs ...", flush=True)
    write_maildir(mh.maildir("small@example.test"),
                  [message(50 * 1024, n) for n in range(1, 1001)])
    write_maildir(mh.maildir("big@example.test"), big=100 * MiB)
    return mh, tls_port


class DovecotPeer:
    """Dovecot over ``protocol`` (``pop3`` or ``imap``) on ``port`` and, over implicit
    TLS, ``tls_port``, serving a copy of mailhost's Maildirs (``copy_from``) as
    ``nobody`` (Dovecot will not access mail as root)."""

    def __init__(self, work: str, protocol: str, cert: str, key: str) -> None:
        self.work, self.protocol, self.cert, self.key = work, protocol, cert, key
        self.mail_root = os.path.join(work, "dovecot-mail")
        self.port, self.tls_port = free_port(), free_port()
        self.base = ""
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def copy_from(self, mh: MailHostProcess) -> None:
        for user in USERS:
            local, _, domain = user.partition("@")
            src = mh.maildir(user)
            dst = os.path.join(self.mail_root, domain, local)
            for sub in ("tmp", "new", "cur"):
                shutil.copytree(os.path.join(src, sub), os.path.join(dst, sub))

    def config(self, passwd: str) -> str:
        work, base, p = self.work, self.base, self.protocol
        other = "imap" if p == "pop3" else "pop3"
        uidl = "pop3_uidl_format = %08Xu%08Xv\n" if p == "pop3" else ""
        return f"""
base_dir = {base}
state_dir = {base}/state
log_path = {work}/dovecot.log
protocols = {p}
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.key}
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1000
last_valid_uid = 0
mail_location = maildir:{self.mail_root}/%d/%n
{uidl}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
service {p}-login {{
  inet_listener {p} {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener {p}s {{
    address = 127.0.0.1
    port = {self.tls_port}
    ssl = yes
  }}
}}
service {other}-login {{
  inet_listener {other} {{
    port = 0
  }}
}}
"""

    def start(self) -> None:
        """Dovecot in the foreground, answering on ``port``; its run directory is a
        short one under /tmp (socket paths)."""
        work = self.work
        passwd = os.path.join(work, "dovecot.passwd")
        uid = gid = 65534  # nobody
        for dirpath, _dirs, files in os.walk(self.mail_root):
            os.chown(dirpath, uid, gid)
            for name in files:
                os.chown(os.path.join(dirpath, name), uid, gid)
        os.makedirs(os.path.join(work, "dovecot-home"), exist_ok=True)
        os.chown(os.path.join(work, "dovecot-home"), uid, gid)
        with open(passwd, "w") as f:
            for user, pw in USERS.items():
                f.write(f"{user}:{{PLAIN}}{pw}:{uid}:{gid}::{work}/dovecot-home::\n")
        self.base = tempfile.mkdtemp(prefix="dc" + self.protocol[0], dir="/tmp")
        conf = os.path.join(work, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(self.config(passwd))
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", conf], stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(work, "dovecot.err"), "wb"))
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    shutil.rmtree(self.base, ignore_errors=True)
                    raise RuntimeError(open(os.path.join(work, "dovecot.err")).read()) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.base:
            shutil.rmtree(self.base, ignore_errors=True)


def children(pid: int, comm: str | None = None) -> list[int]:
    """The live children of ``pid`` (those named ``comm`` only, if given)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            if int(fields[1]) == pid and (comm is None or name == comm):
                out.append(int(entry))
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _times(pid: int) -> list[int]:
    with open(f"/proc/{pid}/stat") as f:
        return [int(x) for x in f.read().rsplit(")", 1)[1].split()[11:15]]


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid``, its reaped children, and its live children.

    Wall-clock MB/s moves with whatever else the machine runs; server CPU per MiB
    is the steadier figure on a shared box.
    """
    utime, stime, cutime, cstime = _times(pid)
    total = utime + stime + cutime + cstime
    for child in children(pid):
        try:
            total += sum(_times(child)[:2])
        except OSError:
            pass
    return total / CLK_TCK
