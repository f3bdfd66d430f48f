"""Dovecot reads the Maildir our IMAP server wrote: same messages, flags, keywords.

``Dovecot`` is a throwaway ``dovecot -F`` on a free loopback port with its own
config, run dir and passwd-file; it is stopped by PID. bench/imap_load.py uses it too.
Dovecot will not serve mail as root, so it runs the mail process as ``nobody`` over a
copy of the Maildir.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.imap.test_server_harness import imap_host_fixture, make_message  # noqa: F401

NOBODY = 65534


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dovecot:
    """A private Dovecot IMAP server over a copy of ``mail_root/<domain>/<localpart>``.

    Dovecot's unprivileged processes cannot enter pytest's 0700 tmp dirs, so the
    config and the copied Maildir live in a fresh world-traversable dir under /tmp,
    removed again by ``stop``.
    """

    def __init__(self, mail_root: str, users: dict[str, str]) -> None:
        self.workdir = tempfile.mkdtemp(prefix="mailhost-dovecot-")
        os.chmod(self.workdir, 0o755)
        self.source_root = mail_root
        self.mail_root = os.path.join(self.workdir, "mail")
        self.users = users
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> Dovecot:
        w = self.workdir
        shutil.copytree(self.source_root, self.mail_root, symlinks=True)
        for d in ("run", "state", "index", "home"):
            os.makedirs(os.path.join(w, d), exist_ok=True)
        with open(os.path.join(w, "passwd"), "w") as f:
            for user, pw in self.users.items():
                f.write(f"{user}:{{PLAIN}}{pw}::::::\n")
        conf = os.path.join(w, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(f"""
base_dir = {w}/run
state_dir = {w}/state
log_path = {w}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
mail_location = maildir:{self.mail_root}/%d/%n:INDEX={w}/index/%d/%n
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {w}/passwd
}}
userdb {{
  driver = static
  args = uid={NOBODY} gid={NOBODY} home={w}/home/%d/%n
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service imap {{
  process_limit = 1024
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
""")
        for path in (self.mail_root, os.path.join(w, "index"), os.path.join(w, "home")):
            subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", path], check=True)
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                c = imaplib.IMAP4("127.0.0.1", self.port, timeout=2)
                c.logout()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("dovecot did not start; see " + os.path.join(w, "dovecot.log"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)


def _snapshot(c: imaplib.IMAP4, folder: str) -> list[tuple[bytes, frozenset[bytes]]]:
    """(Message-ID, flags without \\Recent) for every message, in order."""
    typ, data = c.select(folder, readonly=True)
    assert typ == "OK", (folder, data)
    if data == [b"0"]:
        return []
    typ, data = c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    out = []
    for item in data:
        if not isinstance(item, tuple):
            continue
        head, body = item
        flags = head.split(b"FLAGS (", 1)[1].split(b")", 1)[0].split()
        out.append((body.strip().split(b":", 1)[1].strip(),
                    frozenset(f for f in flags if f != b"\\Recent")))
    return out


@pytest_twisted.ensureDeferred
async def test_dovecot_reads_what_we_wrote(imap_host, tmp_path):
    if shutil.which("dovecot") is None:
        pytest.fail("dovecot is not installed (CI: apt-get install -y dovecot-imapd)")
    host = await imap_host(kind="maildir")
    for i in range(4):
        await host.deliver(make_message(f"dv {i}"))

    def ours():
        c = host.client()
        c.create("Work.Sub")
        c.select("INBOX")
        c.store("1", "+FLAGS", "(\\Seen $Label1)")
        c.store("2", "+FLAGS", "(\\Flagged \\Answered project)")
        c.store("3", "+FLAGS", "(\\Deleted)")
        c.expunge()
        c.append("Work.Sub", "(\\Seen \\Draft)", None, make_message("in sub"))
        c.copy("1", "Work")
        snap = {f: _snapshot(c, f) for f in ("INBOX", "Work", "Work.Sub")}
        c.logout()
        return snap

    expected = await threads.deferToThread(ours)
    assert len(expected["INBOX"]) == 3
    await host.store.close()
    dv = Dovecot(str(tmp_path / "mail"), {"alice@example.test": "secret"})

    def theirs():
        dv.start()
        try:
            c = imaplib.IMAP4("127.0.0.1", dv.port, timeout=10)
            c.login("alice@example.test", "secret")
            names = b" ".join(c.list()[1])
            assert b"Work.Sub" in names and b"Sent" in names
            snap = {f: _snapshot(c, f) for f in ("INBOX", "Work", "Work.Sub")}
            c.logout()
            return snap
        finally:
            dv.stop()

    got = await threads.deferToThread(theirs)
    assert got == expected
