"""Admin commands and the server find the same files, from any working directory.

Regression tests for issue 13: ``mailhost --config /srv/x/dev.toml user add zed@…``
run from another directory said ``added`` and wrote a second
``./mailhost-data/passwd`` that the running server never read; ``user list`` there
printed nothing and exited 0; with TLS on, ``user list`` failed on a missing
certificate it does not need.
"""

from __future__ import annotations

import os
import poplib
import signal
import smtplib
import socket
import subprocess
import sys
import time

from tests.mailhost_process import TWISTD, free_port, write_config

MAILHOST = os.path.join(os.path.dirname(sys.executable), "mailhost")


def mailhost(cwd, *args, stdin=""):
    return subprocess.run([sys.executable, MAILHOST, *args], input=stdin, capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def dev_config(directory, ports=None, **extra) -> str:
    """A config like tap-configs/dev.toml: every path in it relative."""
    sections = {
        "server": {"domains": ["example.test"], "data_dir": "./mailhost-data",
                   "allow_plaintext_auth": "loopback"},
        "auth": {"create_postmaster": False},
    }
    # Every listener explicit: the defaults (143, 110, 25) may be taken on this machine.
    for proto in ("smtp", "submission", "pop3", "imap"):
        port = (ports or {}).get(proto)
        sections[proto] = {"listen": [f"tcp:{port}:interface=127.0.0.1"] if port else []}
    for name, values in extra.items():
        sections.setdefault(name, {}).update(values)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "dev.toml")
    write_config(path, sections)
    return path


def wait_listening(proc, ports, log_path, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"twistd exited {proc.returncode}: "
                                     f"{open(log_path, errors='replace').read()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"port {port} never answered"
                time.sleep(0.1)


def test_user_add_from_another_cwd_acts_on_the_config_dirs_data(tmp_path):
    srv = tmp_path / "srv" / "x"
    conf = dev_config(srv)
    other = tmp_path / "home"
    other.mkdir()

    r = mailhost(other, "--config", conf, "user", "add", "zed@example.test", stdin="zed-pw\n")
    assert r.returncode == 0, r.stderr
    passwd = srv / "mailhost-data" / "passwd"
    assert f"to {passwd}" in r.stdout
    assert "zed@example.test:" in passwd.read_text()
    assert not (other / "mailhost-data").exists()

    # A relative --config path from yet another directory names the same files.
    r = mailhost(tmp_path, "--config", "srv/x/dev.toml", "user", "list")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["zed@example.test"]
    assert not (tmp_path / "mailhost-data").exists()


def test_twistd_from_another_cwd_uses_the_same_files_as_the_cli(tmp_path):
    srv = tmp_path / "srv" / "x"
    ports = {"smtp": free_port(), "pop3": free_port()}
    conf = dev_config(srv, ports)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert mailhost(tmp_path, "--config", conf, "user", "add", "zed@example.test",
                    stdin="zed-pw\n").returncode == 0

    log_path = str(tmp_path / "twistd.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, TWISTD, "-n", "--pidfile=", "mailhost",
                                 "--config", os.path.relpath(conf, run_dir)],
                                cwd=run_dir, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        wait_listening(proc, ports.values(), log_path)
        assert proc.poll() is None, open(log_path, errors="replace").read()
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s:
            s.sendmail("a@elsewhere.test", ["zed@example.test"],
                       b"Subject: paths\r\n\r\nsame files\r\n")
        # The user the CLI added logs in to the server: one passwd file.
        pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=30)
        pop.user("zed@example.test")
        pop.pass_("zed-pw")
        assert pop.stat()[0] == 1
        pop.quit()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    new = srv / "mailhost-data" / "mail" / "example.test" / "zed" / "new"
    assert len(os.listdir(new)) == 1
    assert (srv / "mailhost-data" / "queue").is_dir()
    assert not (run_dir / "mailhost-data").exists()
    # The queue command reads the server's spool from anywhere too.
    r = mailhost(tmp_path / "run", "--config", conf, "queue", "list")
    assert r.returncode == 0, r.stderr
    assert "-- 0 messages" in r.stdout


def test_user_list_names_a_missing_or_empty_passwd_file(tmp_path):
    conf = dev_config(tmp_path / "etc")
    passwd = tmp_path / "etc" / "mailhost-data" / "passwd"
    r = mailhost(tmp_path, "--config", conf, "user", "list")
    assert r.returncode == 1
    assert r.stdout == ""
    assert f"no passwd file at {passwd}" in r.stderr

    passwd.parent.mkdir(parents=True)
    passwd.write_text("")
    r = mailhost(tmp_path, "--config", conf, "user", "list")
    assert r.returncode == 0
    assert r.stdout == ""
    assert f"no users in {passwd}" in r.stderr


def test_commands_without_tls_work_while_the_cert_is_missing(tmp_path):
    """`user …` and `queue …` never read the TLS files; check-config and the server
    do, and say which key names the missing file, in one line."""
    conf = dev_config(tmp_path / "etc", {"smtp": free_port()},
                      tls={"cert": "tls/cert.pem", "key": "tls/key.pem"})
    r = mailhost(tmp_path, "--config", conf, "user", "add", "zed@example.test",
                 stdin="pw\n")
    assert r.returncode == 0, r.stderr
    r = mailhost(tmp_path, "--config", conf, "user", "list")
    assert (r.returncode, r.stdout.strip()) == (0, "zed@example.test"), r.stderr
    r = mailhost(tmp_path, "--config", conf, "queue", "list")
    assert r.returncode == 0, r.stderr

    cert = tmp_path / "etc" / "tls" / "cert.pem"
    r = mailhost(tmp_path, "check-config", conf)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"mailhost: config error: tls.cert: cannot read {cert}: No such file or directory"]

    r = subprocess.run([sys.executable, TWISTD, "-n", "--pidfile=", "mailhost",
                        "--config", conf], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    err = (r.stderr + r.stdout).strip()
    assert f"tls.cert: cannot read {cert}" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err

    # With the files in place (relative to the config file), check-config passes.
    r = mailhost(tmp_path, "cert", "selfsigned", "--hostname", "localhost",
                 "--out", str(tmp_path / "etc" / "tls"))
    assert r.returncode == 0, r.stderr
    r = mailhost(tmp_path / "etc", "check-config", "dev.toml")
    assert r.returncode == 0, r.stderr
    assert f'cert = "{cert}"' in r.stdout
