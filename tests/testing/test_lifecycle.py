"""start()/stop() cycles leak no ports, threads or file descriptors; start errors are clean."""

from __future__ import annotations

import os
import smtplib
import socket
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import threads

from mailhost.testing import MailHost

CYCLES = 100


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _threads() -> int:
    """Threads other than the reactor's pool, which is process-wide and bounded (it may
    grow up to its maximum while several store/queue jobs overlap; that is no leak)."""
    return sum(1 for t in threading.enumerate()
               if not t.name.startswith("PoolThread-twisted.internet.reactor-"))


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _noop(port: int) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        return s.noop()[0]


@pytest_twisted.ensureDeferred
async def test_start_stop_cycles_leak_nothing():
    # Warm up what is legitimately created once per process (the reactor's thread pool,
    # lazily imported modules, the resolver), then measure.
    host = MailHost(users={"alice@example.test": "pw"})
    await host.start()
    assert await threads.deferToThread(_noop, host.smtp_port) == 250
    await host.stop()
    fds, nthreads = _fds(), _threads()
    started = time.monotonic()
    ports: list[int] = []
    for i in range(CYCLES):
        host = MailHost(users={"alice@example.test": "pw"}, store="memory")
        await host.start()
        ports = [host.smtp_port, host.submission_port, host.pop3_port, host.imap_port]
        if i % 10 == 0:
            # A real client, and a connection still open when stop() is called.
            assert await threads.deferToThread(_noop, host.smtp_port) == 250
            lingering = socket.create_connection(("127.0.0.1", host.imap_port), timeout=5)
        await host.stop()
        if i % 10 == 0:
            lingering.settimeout(5)
            try:
                while lingering.recv(4096):  # the greeting, then EOF
                    pass
            except ConnectionResetError:
                pass  # stop() aborts open connections
            lingering.close()
        assert not host.running
    elapsed = time.monotonic() - started
    assert all(_refused(p) for p in ports)
    assert _fds() <= fds, f"fd leak: {fds} -> {_fds()}"
    assert _threads() <= nthreads, f"thread leak: {nthreads} -> {_threads()}"
    from twisted.internet import reactor

    assert len(reactor.threadpool.threads) <= reactor.threadpool.max
    assert elapsed < 30, f"{CYCLES} cycles took {elapsed:.1f}s"


class _BusyPortHost(MailHost):
    """IMAP on a port that is already taken: start() fails after other listeners bound."""

    busy_port = 0

    def _config(self, tmpdir):
        config = super()._config(tmpdir)
        config.imap.listen = [f"tcp:{self.busy_port}:interface=127.0.0.1"]
        return config


@pytest_twisted.ensureDeferred
async def test_failed_start_cleans_up():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        host = _BusyPortHost()
        host.busy_port = busy.getsockname()[1]
        fds = _fds()
        with pytest.raises(Exception, match="(?i)address already in use|bind"):
            await host.start()
    assert not host.running and host._tmpdir is None and host.service is None
    assert _fds() <= fds


def test_bad_arguments_fail_early():
    with pytest.raises(ValueError):
        MailHost(store="sqlite")


@pytest_twisted.ensureDeferred
async def test_ports_need_a_started_host():
    host = MailHost()
    with pytest.raises(RuntimeError, match="not started"):
        host.smtp_port  # noqa: B018
    await host.start()
    try:
        with pytest.raises(AttributeError, match="tls=True"):
            host.imaps_port  # noqa: B018
        with pytest.raises(RuntimeError, match="already running"):
            await host.start()
    finally:
        await host.stop()
