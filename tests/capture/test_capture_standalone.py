"""The standalone capture server: ``twistd -n mailhost --config tap-configs/capture.toml``
accepts and stores mail for anyone, and never queues, relays or looks a name up."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import time

import pytest_twisted
from twisted.internet import threads

from mailhost.mailview import MessageQuery, StoreMailView
from mailhost.store.maildir import MaildirStore
from mailhost.testing import MailHost
from tests.mailhost_process import PROTOCOLS, TWISTD, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CAPTURE_TOML = os.path.join(ROOT, "tap-configs", "capture.toml")
RECIPIENTS = [f"user{i}@{d}" for i, d in enumerate(
    ["gmail.test", "yahoo.test", "corp.test", "shop.test", "bank.test"] * 4)]


def _wait_listening(proc: subprocess.Popen, ports: dict[str, int], log: str,
                    timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    pending = dict(ports)
    while pending:
        if proc.poll() is not None:
            raise RuntimeError(f"twistd exited with {proc.returncode}:\n{open(log).read()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"twistd did not listen on {pending}:\n{open(log).read()}")
        for name, port in list(pending.items()):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                del pending[name]
            except OSError:
                pass
        time.sleep(0.1)


def _send_to_everyone(port: int) -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        return smtp.sendmail("app@app.test", RECIPIENTS,
                             b"From: app@app.test\r\nSubject: from the app\r\n\r\nhi\r\n")


@pytest_twisted.ensureDeferred
async def test_twistd_capture_toml_stores_mail_for_anyone_and_looks_nothing_up(
        tmp_path, dns_server):
    data = tmp_path / "data"
    ports = {p: free_port() for p in PROTOCOLS}
    # A smarthost nobody may ever connect to: were anything relayed, it would go here.
    smarthost = socket.socket()
    smarthost.bind(("127.0.0.1", 0))
    smarthost.listen()
    smarthost.setblocking(False)
    overrides = [f"server.data_dir={data}"]
    overrides += [f'{p}.listen=["tcp:{port}:interface=127.0.0.1"]' for p, port in ports.items()]
    # Were anything relayed, routed or checked, it would ask this server.
    overrides += [f"outbound.resolver={dns_server.nameserver}",
                  f"outbound.smarthost=127.0.0.1:{smarthost.getsockname()[1]}",
                  f'dns.nameservers=["{dns_server.nameserver}"]',
                  'pipeline.stages=["spf", "dkim", "dmarc"]',
                  'dnsbl.zones=["bl.capture.test"]', "smtp.fcrdns=require",
                  "greylist.enabled=true"]
    log = str(tmp_path / "twistd.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, TWISTD, "-n", "--pidfile=", "mailhost", "--config", CAPTURE_TOML,
             *[arg for o in overrides for arg in ("--set", o)]],
            cwd=str(tmp_path), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        await threads.deferToThread(_wait_listening, proc, ports, log)
        refused = await threads.deferToThread(_send_to_everyone, ports["smtp"])
        assert refused == {}
    finally:
        proc.send_signal(signal.SIGTERM)
        await threads.deferToThread(proc.wait, 15)
    assert proc.returncode in (0, -signal.SIGTERM), open(log).read()  # a clean stop
    # Everything on disk, one Maildir per recipient, read back through the mail view.
    store = MaildirStore(str(data / "capture"), fsync=False)
    view = StoreMailView(store)
    assert await view.mailboxes() == sorted(RECIPIENTS)
    for rcpt in RECIPIENTS:
        (got,) = await view.messages(MessageQuery(mailbox=rcpt))
        assert got.subject == "from the app" and got.sender == "app@app.test"
    await store.close()
    assert not os.path.exists(data / "queue")  # no spool was ever made
    assert dns_server.queries == []
    try:
        smarthost.accept()
        raise AssertionError("capture mode connected to the smarthost")
    except BlockingIOError:
        pass
    finally:
        smarthost.close()


@pytest_twisted.ensureDeferred
async def test_capture_host_has_no_outbound_service_or_queue():
    host = MailHost(capture=True, store="maildir")
    await host.start()
    try:
        assert host.service.outbound is None and host.service.queue is None
        refused = await threads.deferToThread(_send_to_everyone, host.smtp_port)
        assert refused == {}
        await host.wait_for_messages(20, timeout=60)
        assert host.outbound_messages() == []
        assert not os.path.exists(os.path.join(host._tmpdir, "queue"))
    finally:
        await host.stop()


def test_capture_toml_listens_on_loopback_only():
    from mailhost.config import load

    config = load(CAPTURE_TOML)
    assert config.capture.enabled
    endpoints = [e for section in (config.smtp, config.submission, config.pop3, config.imap)
                 for e in section.listen + section.listen_tls]
    assert endpoints and all(e.endswith(":interface=127.0.0.1") for e in endpoints), endpoints
