"""Reload without restart: passwd and aliases edits, and SIGHUP for the config file."""

from __future__ import annotations

import os
import poplib
import signal
import smtplib
import subprocess
import sys
import time

from tests.mailhost_process import free_port, write_config

MAILHOST = os.path.join(os.path.dirname(sys.executable), "mailhost")


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def ehlo_size(port: int) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo()
        return int(s.esmtp_features["size"])


def test_passwd_and_aliases_changes_need_no_restart(mailhost_proc):
    mh = mailhost_proc
    r = subprocess.run([sys.executable, MAILHOST, "--config", mh.config_path, "user", "add",
                        "carol@example.test"], input="carol-pw\n", capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pop = poplib.POP3("127.0.0.1", mh.ports["pop3"], timeout=30)
    pop.user("carol@example.test")
    pop.pass_("carol-pw")  # the running server sees the new user at once
    pop.quit()

    with smtplib.SMTP("127.0.0.1", mh.ports["smtp"], timeout=30) as s:
        s.ehlo()
        assert s.docmd("MAIL FROM:<x@elsewhere.test>")[0] == 250
        assert s.docmd("RCPT TO:<sales@example.test>")[0] == 550
        with open(os.path.join(mh.data_dir, "aliases"), "w") as f:  # edited by hand
            f.write("sales@example.test: carol@example.test, bob@example.test\n")
        assert s.docmd("RCPT TO:<sales@example.test>")[0] == 250


def test_sighup_applies_what_it_can_and_names_the_rest(mailhost_proc):
    mh = mailhost_proc
    assert ehlo_size(mh.ports["smtp"]) == 32 * 1024 * 1024
    import tomllib

    with open(mh.config_path, "rb") as f:
        data = tomllib.load(f)
    data["smtp"]["max_message_size"] = 2 * 1024 * 1024
    data["imap"]["listen"] = [f"tcp:{free_port()}:interface=127.0.0.1"]
    write_config(mh.config_path, data)
    os.kill(mh.pid, signal.SIGHUP)
    assert wait_for(lambda: ehlo_size(mh.ports["smtp"]) == 2 * 1024 * 1024)
    assert wait_for(lambda: "needs a restart: ['imap.listen']" in mh.log()), mh.log()
    assert "applied ['smtp.max_message_size']" in mh.log()

    # A broken file on SIGHUP is reported and the server keeps running as it was.
    with open(mh.config_path, "a") as f:
        f.write("[smtp]\nbogus = 1\n")
    os.kill(mh.pid, signal.SIGHUP)
    assert wait_for(lambda: "reload failed" in mh.log())
    assert ehlo_size(mh.ports["smtp"]) == 2 * 1024 * 1024
