"""Socket activation: listeners given as ``systemd:domain=INET:index=N`` endpoints.

This is what the systemd unit in docs/operations.md relies on. The test plays systemd:
it binds the sockets, passes them as fds 3.. with LISTEN_FDS/LISTEN_PID, and execs
twistd (exec keeps the PID, as systemd's LISTEN_PID requires).
"""

from __future__ import annotations

import os
import smtplib
import socket
import subprocess
import sys
import time
import tomllib

from tests.mailhost_process import TWISTD, MailHostProcess, write_config

LAUNCHER = r"""
import os, socket, sys
socks = []
for port in sys.argv[1:3]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(port)))
    s.listen(16)
    socks.append(s)
for i, s in enumerate(socks):
    os.dup2(s.fileno(), 3 + i)
    os.set_inheritable(3 + i, True)
os.environ["LISTEN_FDS"] = str(len(socks))
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDNAMES"] = "smtp:imap"  # systemd >= 227 always sets it
os.execv(sys.executable, [sys.executable] + sys.argv[3:])
"""


def test_systemd_socket_activation(tmp_path):
    mh = MailHostProcess(str(tmp_path))
    mh.configure()
    smtp_port, imap_port = mh.ports["smtp"], mh.ports["imap"]
    with open(mh.config_path, "rb") as f:
        data = tomllib.load(f)
    data["smtp"]["listen"] = ["systemd:domain=INET:index=0"]
    data["imap"]["listen"] = ["systemd:domain=INET:index=1"]
    data["submission"]["listen"] = []
    data["pop3"]["listen"] = []
    write_config(mh.config_path, data)
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(smtp_port), str(imap_port),
         TWISTD, "-n", "--pidfile=", "mailhost", "--config", mh.config_path],
        cwd=tmp_path, stdout=open(mh.log_path, "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, mh.log()
            try:
                with smtplib.SMTP("127.0.0.1", smtp_port, timeout=5) as s:
                    code, banner = s.ehlo()
                    if code == 250:
                        s.sendmail("x@elsewhere.test", ["alice@example.test"],
                                   b"Subject: activated\r\n\r\nhi\r\n")
                        break
            except (OSError, smtplib.SMTPException):
                pass
            assert time.monotonic() < deadline, mh.log()
            time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", imap_port), timeout=10) as c:
            assert c.recv(100).startswith(b"* OK")
        inbox = os.path.join(mh.maildir("alice@example.test"), "new")
        assert len(os.listdir(inbox)) == 1
    finally:
        proc.kill()
        proc.wait(10)
