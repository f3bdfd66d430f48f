"""A private PostgreSQL cluster for the tests: initdb in a temporary directory, a
loopback port, torn down at the end.

PostgreSQL refuses to run as root, and CI runs as root: then the cluster belongs to
an unprivileged system user (Debian's ``postgres``, made if missing) and every
server program runs through ``runuser``. Nothing is skipped when PostgreSQL is
missing: ``.ci/install`` installs Debian's ``postgresql``, and a machine without it
fails these tests saying so.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile

from tests.ports import free_port

#: The superuser the cluster is made with; every test database belongs to it.
SUPERUSER = "mailhost"
RUN_AS = "postgres"

_databases = itertools.count(1)


def bin_dir() -> str:
    """The newest installed PostgreSQL's server programs (Debian keeps them out of PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[-3]))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql);"
                           " .ci/install installs it")
    return os.path.dirname(initdb)


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        RUN_AS], check=True)
        return pwd.getpwnam(RUN_AS)


class PgCluster:
    """One throw-away cluster; ``dsn(db)`` addresses a database in it, ``new_database``
    makes a fresh empty one (a test's own)."""

    def __init__(self) -> None:
        self.bin = bin_dir()
        # As root, under /tmp whatever TMPDIR says: the postgres user must reach it.
        where = "/tmp" if os.geteuid() == 0 and os.path.isdir("/tmp") else None
        self.root = tempfile.mkdtemp(prefix="mailhost-pg-", dir=where)
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.port = 0
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = _ensure_user()
            os.chmod(self.root, 0o755)
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [os.path.join(self.bin, argv[0]), *argv[1:]]
        if self._user is not None:
            cmd = ["runuser", "-u", self._user.pw_name, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              cwd=self.root)

    def start(self) -> PgCluster:
        r = self._run("initdb", "-D", self.data, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                      "--locale=C", "--no-sync")
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr.strip()}")
        for _ in range(5):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
                    " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                    " -c max_connections=200")
            r = self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", opts, "-w",
                          "-t", "60", "start")
            if r.returncode == 0:
                return self
        raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()} {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; its DSN."""
        import psycopg

        name = f"t{os.getpid()}_{next(_databases)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def restart(self) -> None:
        """Stop (fast: connections are cut) and start again on the same port."""
        self.halt()
        self.resume()

    def halt(self) -> None:
        """Stop the server (fast: connections are cut), keeping its data."""
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start a halted server again on the same port."""
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        r = self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", opts, "-w", "start")
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()}")

    def stop(self) -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
