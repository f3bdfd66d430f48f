"""``twistd --logfile FILE mailhost`` with ``server.workers = 2``: one log file holds the
supervisor's lines and every worker's, and rotates as one (SIGUSR1).

Before, the workers wrote to the supervisor's standard output whatever ``--logfile``
said, so the file held only the supervisor's few lines (and a daemonised server lost
the workers' logs to /dev/null)."""

from __future__ import annotations

import imaplib
import os
import re
import signal
import time

from tests.mailhost_process import MailHostProcess

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def _wait_for(path: str, needle: str, count: int = 1, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            with open(path, errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            text = ""
        if text.count(needle) >= count:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} x{count} not in {path}:\n{text[-3000:]}")


def _imap_session(port: int) -> None:
    c = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    c.login("alice@example.test", "alice-pw")
    c.logout()


def test_logfile_holds_every_workers_lines_and_rotates_as_one(tmp_path):
    logfile = str(tmp_path / "mail.log")
    proc = MailHostProcess(str(tmp_path / "host"), extra={"server": {"workers": 2}},
                           twistd_args=[f"--logfile={logfile}"])
    try:
        proc.start()
        imap_port = proc.ports["imap"]
        # Each worker adopts the listeners and says so: both are in the one file.
        text = _wait_for(logfile, f"(LimitingFactory) starting on {imap_port}", 2)
        assert "started 2 workers" in text  # the supervisor's own line, same file
        assert "starting on" not in proc.log_since_start()  # nothing went to stdout
        for _ in range(6):  # the kernel spreads them over the workers
            _imap_session(imap_port)
        text = _wait_for(logfile, "imap session end user=alice@example.test", 6)
        for line in text.splitlines():  # whole lines: no two processes mid-line
            assert STAMP.match(line) or line.startswith("\t"), line

        os.kill(proc.pid, signal.SIGUSR1)  # logrotate's postrotate
        _wait_for(logfile + ".1", "imap session end", 6)
        _imap_session(imap_port)
        _imap_session(imap_port)
        text = _wait_for(logfile, "imap session end user=alice@example.test", 2)
        assert "(LimitingFactory) starting on" not in text  # a new file after rotation
    finally:
        proc.stop()
    assert not proc.worker_pids()
