"""A second ``twistd mailhost`` on ports already in use stops in one line.

Regression test for issue 13: a second start with ``--pidfile=`` (so twistd's own
pidfile check does not catch it) printed a 40-line traceback.
"""

from __future__ import annotations

import subprocess
import sys

import pytest_twisted
from twisted.internet import defer

from mailhost.config import Config
from mailhost.service import ListenError, makeService
from tests.mailhost_process import TWISTD


def test_second_start_on_a_port_in_use_is_one_line(mailhost_proc):
    r = subprocess.run([sys.executable, TWISTD, "-n", "--pidfile=", "mailhost",
                        "--config", mailhost_proc.config_path, "--set",
                        'server.data_dir="second"'],
                       cwd=mailhost_proc.workdir, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out
    port = mailhost_proc.ports["smtp"]
    failed = [line for line in out.splitlines() if "cannot listen" in line]
    assert len(failed) == 1, out
    assert failed[0].endswith(f"smtp.listen tcp:{port}:interface=127.0.0.1: cannot listen: "
                              "Address already in use; not starting"), out
    # Only twistd's two start-up lines besides ours.
    assert len(out.strip().splitlines()) <= 3, out
    # The first server is untouched.
    assert mailhost_proc.proc.poll() is None


@pytest_twisted.inlineCallbacks
def test_embedder_gets_listen_error_naming_the_listener(tmp_path):
    """Embedded (no twistd), the same failure is a ListenError, not a SystemExit."""
    first = Config()
    first.server.data_dir = str(tmp_path / "one")
    first.smtp.listen = ["tcp:0:interface=127.0.0.1"]
    first.pop3.listen, first.imap.listen = [], []
    one = makeService(first)
    one.startService()
    try:
        ports = yield one.wait_listening()
        port = ports["smtp"][0].getHost().port
        second = Config()
        second.server.data_dir = str(tmp_path / "two")
        second.smtp.listen = [f"tcp:{port}:interface=127.0.0.1"]
        second.pop3.listen, second.imap.listen = [], []
        two = makeService(second)
        try:
            two.startService()
            raise AssertionError("the second service started on a port in use")
        except ListenError as e:
            assert str(e) == (f"smtp.listen tcp:{port}:interface=127.0.0.1: cannot listen: "
                              "Address already in use")
        finally:
            yield defer.maybeDeferred(two.stopService)
    finally:
        yield one.stopService()
