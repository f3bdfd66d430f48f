"""A private Dovecot IMAP server for tests and benchmarks, and the unprivileged user
both servers run as.

``Dovecot`` is a throwaway ``dovecot -F -c <conf>`` on a free loopback port with its
own config, run dir, passwd-file, indexes and log; it is stopped by PID, never by name.
It serves either a *copy* of a Maildir tree (the interop tests and the benchmark, which
must not let Dovecot touch the original) or, with ``share=True``, the tree itself, live,
beside a running mailhost (tests/e2e/test_dovecot_sharing.py).

Dovecot refuses to serve mail as uid 0, so its mail processes run as the ``mail``
user (looked up, never assumed to be uid 8); mailhost runs as the same user through
twistd's ``--uid/--gid`` when the two share a Maildir, as in production.
"""

from __future__ import annotations

import functools
import grp
import imaplib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from tests.ports import free_port

MAIL_USER = "mail"

#: Lines in Dovecot's log that mean it found something wrong (with our files, usually).
#: Dovecot logs every repair it makes as a warning naming the uidlist or the fix.
DOVECOT_TROUBLE = re.compile(
    r"Error:|Panic:|Fatal:|Warning:.*(uidlist|keywords|Fixed|fixed|inserted|reappeared|"
    r"[Dd]uplicate|[Bb]roken|[Cc]orrupt|renamed|[Rr]esync|fsck|[Ll]ost)")


@dataclass(frozen=True)
class MailUser:
    """The unprivileged account mailhost and Dovecot share."""

    name: str
    uid: int
    gid: int


def mail_user() -> MailUser:
    """The ``mail`` user and its primary group, from the system databases."""
    pw = pwd.getpwnam(MAIL_USER)
    grp.getgrgid(pw.pw_gid)  # the group must exist too
    return MailUser(MAIL_USER, pw.pw_uid, pw.pw_gid)


@functools.cache
def check_mail_user_can_run_mailhost(python: str = sys.executable) -> str | None:
    """Why the mail user cannot run ``python -c 'import mailhost, twisted'``, or None.

    The end-to-end tests run twistd as that user, so the interpreter, the venv and the
    checkout must all be readable and traversable by it (``.ci/venv`` builds the venv on
    Debian's /usr/bin/python3 for this reason)."""
    user = mail_user()
    if os.getuid() != 0:
        return (f"these tests start twistd and Dovecot as the {user.name!r} user and must run "
                f"as root (uid {os.getuid()} cannot switch users)")
    if shutil.which("runuser") is None:
        return "runuser (util-linux) is not installed"
    r = subprocess.run(["runuser", "-u", user.name, "--", python, "-c", "import mailhost, twisted"],
                       cwd="/", capture_output=True, text=True, timeout=60)
    if r.returncode == 0:
        return None
    blocked = []
    import mailhost

    for path in (os.path.realpath(python), os.path.dirname(os.path.abspath(mailhost.__file__))):
        parts = path.split(os.sep)
        for i in range(2, len(parts) + 1):
            d = os.sep.join(parts[:i])
            st = os.stat(d)
            if os.path.isdir(d) and not st.st_mode & 0o001 and st.st_uid != user.uid:
                blocked.append(f"{d} (mode {st.st_mode & 0o7777:o}, not traversable by others)")
                break
    why = "; ".join(blocked) or r.stderr.strip()[-600:]
    return (f"the {user.name!r} user cannot run {python} -c 'import mailhost, twisted': {why}. "
            f"Put the checkout and its venv (bash .ci/venv, on /usr/bin/python3) on a path "
            f"every user may traverse.")



def world_dir(prefix: str) -> str:
    """A fresh dir under /tmp that Dovecot's and mailhost's unprivileged processes can
    traverse (pytest's tmp dirs are 0700 and root's)."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(path, 0o755)
    return path


class Dovecot:
    """A private Dovecot IMAP server over ``mail_root/<domain>/<localpart>``.

    Without ``share`` it serves a copy of ``mail_root`` made in ``start``; with
    ``share=True`` it serves ``mail_root`` itself, which must already be reachable by
    the mail user. Its config, passwd-file, indexes, home dirs and log live in
    ``workdir`` (a fresh world-traversable dir under /tmp unless given), removed by
    ``stop`` when it made it.
    """

    def __init__(self, mail_root: str, users: dict[str, str], *, share: bool = False,
                 workdir: str | None = None, extra_config: str = "") -> None:
        self.owns_workdir = workdir is None
        self.extra_config = extra_config  # appended to the config (plugins: quota)
        self.workdir = workdir or world_dir("mailhost-dovecot-")
        os.makedirs(self.workdir, exist_ok=True)
        self.share = share
        self.source_root = mail_root
        self.mail_root = mail_root if share else os.path.join(self.workdir, "mail")
        self.users = users
        self.user = mail_user()
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def config_path(self) -> str:
        return os.path.join(self.workdir, "dovecot.conf")

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, "dovecot.log")

    def config(self) -> str:
        w, u = self.workdir, self.user
        # Each setting that matters for sharing the Maildir live with another server is
        # explained; the rest only makes a private, loopback-only instance. Sources: the
        # comments of Debian's /etc/dovecot/conf.d/10-mail.conf (2.3) and
        # https://doc.dovecot.org/2.3/configuration_manual/mail_location/Maildir/.
        return f"""
base_dir = {w}/run
state_dir = {w}/state
log_path = {w}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull

# The mail processes run as the unprivileged mail user (Dovecot refuses uid 0), the
# same user mailhost runs as, so both can rename and unlink each other's files.
mail_uid = {u.uid}
mail_gid = {u.gid}
first_valid_uid = {u.uid}
last_valid_uid = {u.uid}
first_valid_gid = {u.gid}
last_valid_gid = {u.gid}

# The Maildir itself, shared; control files (dovecot-uidlist, dovecot-keywords) stay in
# it (no CONTROL=), because that is where mailhost reads and writes them. The indexes
# are Dovecot's private cache and go to a dir of their own (INDEX=): they can be
# rebuilt from the Maildir at any time, and mailhost never reads them.
mail_location = maildir:{self.mail_root}/%d/%n:INDEX={w}/index/%d/%n

# "Assume Dovecot is the only MUA accessing Maildir: scan cur/ only when its mtime
# changes unexpectedly". It is not the only one here: every sync must look at new/
# and cur/, so flag renames and expunges by mailhost are seen at the next command.
maildir_very_dirty_syncs = no
# IDLE: Dovecot watches the Maildir with inotify and reports at once; this is the
# fallback poll interval when the notify mechanism does not fire (default 30 s).
mailbox_idle_check_interval = 1 secs
# fsync only "whenever necessary to avoid losing important data" (the default). Other
# processes on this host see our writes through the page cache, fsync or not; it is
# about crashes, so the production default is the right thing to test with.
mail_fsync = optimized
# Locking of *index* files only (fcntl is the default): the indexes are private to this
# Dovecot, so it only orders Dovecot's own processes. dovecot-uidlist is always locked
# with the dovecot-uidlist.lock dotlock, whatever this says; that is the protocol
# mailhost must follow. mmap_disable is "required if you store indexes to shared
# filesystems (NFS or clustered filesystem)"; ours are on a local disk, so keep mmap.
lock_method = fcntl
mmap_disable = no
dotlock_use_excl = yes
# Local files, not NFS: no attribute-cache flushing needed.
mail_nfs_storage = no
mail_nfs_index = no
# COPY by hard link (the default): the same inode then sits in two folders, which
# mailhost must handle (a rename in one folder does not touch the other).
maildir_copy_with_hardlinks = yes

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {w}/passwd
}}
userdb {{
  driver = static
  args = uid={u.uid} gid={u.gid} home={w}/home/%d/%n
}}
protocol imap {{
  # The stress test opens many sessions per user from 127.0.0.1 (default 10).
  mail_max_userip_connections = 100
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
""" + self.extra_config

    def start(self, timeout: float = 15.0) -> Dovecot:
        w, u = self.workdir, self.user
        if not self.share:
            shutil.copytree(self.source_root, self.mail_root, symlinks=True)
            subprocess.run(["chown", "-R", f"{u.uid}:{u.gid}", self.mail_root], check=True)
        for d in ("run", "state"):
            os.makedirs(os.path.join(w, d), exist_ok=True)
        for d in ("index", "home"):  # the mail processes' own dirs: private to the mail user
            path = os.path.join(w, d)
            os.makedirs(path, exist_ok=True)
            os.chown(path, u.uid, u.gid)
            os.chmod(path, 0o700)
        with open(os.path.join(w, "passwd"), "w") as f:
            for user, pw in self.users.items():
                f.write(f"{user}:{{PLAIN}}{pw}::::::\n")
        with open(self.config_path, "w") as f:
            f.write(self.config())
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", self.config_path],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                c = imaplib.IMAP4("127.0.0.1", self.port, timeout=2)
                c.logout()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        log = self.log()
        self.stop()
        raise RuntimeError(f"dovecot did not start:\n{log}")

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def trouble(self, text: str | None = None) -> list[str]:
        """The lines of Dovecot's log (or of ``text``) that report an error or a repair."""
        return [line for line in (self.log() if text is None else text).splitlines()
                if DOVECOT_TROUBLE.search(line)]

    def doveadm(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run ``doveadm -c <our conf> ARGS`` (as root; it drops to the mail user itself)."""
        return subprocess.run(["doveadm", "-c", self.config_path, *args],
                              capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
