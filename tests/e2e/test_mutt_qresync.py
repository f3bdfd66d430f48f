"""mutt with ``imap_condstore`` and ``imap_qresync`` resyncs a 1,000-message folder by
fetching only what changed (issue 16).

mutt opens the folder once (filling its header cache, which QRESYNC needs); another
session then changes the flags of 3 messages and expunges 2; mutt's second open goes
through a small recording loopback proxy, so the test sees the IMAP traffic itself:
``ENABLE QRESYNC``, FETCHes only with ``(CHANGEDSINCE n VANISHED)``, one
``VANISHED (EARLIER)`` naming the 2, FETCHes of the 3, and nothing per message beyond.
"""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.imap.test_server_harness import ALICE, imap_host_fixture, make_message  # noqa: F401

MESSAGES = 1000


class RecordingProxy:
    """A loopback TCP proxy in threads that keeps each connection's bytes, both ways."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.sessions: list[dict[str, bytearray]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream), timeout=30)
            record = {"up": bytearray(), "down": bytearray()}
            self.sessions.append(record)
            for src, dst, key in ((client, server, "up"), (server, client, "down")):
                t = threading.Thread(target=self._pump, args=(src, dst, record[key]),
                                     daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, into: bytearray) -> None:
        src.settimeout(30)
        try:
            while not self._stop.is_set():
                data = src.recv(65536)
                if not data:
                    break
                into += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for t in self._threads:
            t.join(timeout=5)


def _mutt(rc: str, port: int, home: str) -> subprocess.CompletedProcess:
    """Open INBOX and quit at once (mutt needs a terminal: script(1); keys are pushed)."""
    cmd = f"mutt -n -F {rc} -f imap://127.0.0.1:{port}/INBOX -e 'push <quit>'"
    env = dict(os.environ, TERM="xterm", HOME=home)
    return subprocess.run(["timeout", "40", "script", "-qec", cmd, "/dev/null"],
                          capture_output=True, timeout=50, env=env,
                          stdin=subprocess.DEVNULL)


@pytest_twisted.ensureDeferred
async def test_mutt_second_open_fetches_only_the_changes(imap_host, tmp_path):
    for tool in ("mutt", "script"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (CI: apt-get install -y mutt bsdutils)")
    host = await imap_host(kind="maildir")
    writer_batch = []
    for i in range(MESSAGES):
        writer_batch.append(host.deliver(make_message(f"qresync {i}")))
        if len(writer_batch) >= 50:
            for d in writer_batch:
                await d
            writer_batch = []
    for d in writer_batch:
        await d
    cache = tmp_path / "hcache"
    cache.mkdir()
    proxy = RecordingProxy(host.port)
    rc = tmp_path / "muttrc"
    rc.write_text(
        'set imap_user="alice@example.test"\nset imap_pass="secret"\n'
        "set ssl_starttls=no\nset ssl_force_tls=no\n"
        f'set folder="imap://127.0.0.1:{proxy.port}/"\nset spoolfile="+INBOX"\n'
        f'set header_cache="{cache}/"\nset message_cachedir=""\n'
        "set imap_condstore=yes\nset imap_qresync=yes\n"
        "set mark_old=no\nset move=no\nset quit=yes\nset wait_key=no\nset timeout=1\n"
    )
    try:
        first = await threads.deferToThread(_mutt, str(rc), proxy.port, str(tmp_path))
        assert first.returncode == 0, first.stdout[-2000:]
        assert len(proxy.sessions) == 1
        first_down = bytes(proxy.sessions[0]["down"])
        assert first_down.count(b"qresync 999") >= 1  # headers fetched into the cache

        def change() -> None:
            c = imaplib.IMAP4("127.0.0.1", host.port, timeout=10)
            c.login(*ALICE)
            c.select("INBOX")
            c.uid("STORE", "10", "+FLAGS", "(\\Flagged)")
            c.uid("STORE", "500", "+FLAGS", "(\\Seen)")
            c.uid("STORE", "990", "+FLAGS", "(\\Answered)")
            c.uid("STORE", "20,700", "+FLAGS", "(\\Deleted)")
            c.expunge()
            c.logout()

        await threads.deferToThread(change)
        started = time.monotonic()
        second = await threads.deferToThread(_mutt, str(rc), proxy.port, str(tmp_path))
        took = time.monotonic() - started
        assert second.returncode == 0, second.stdout[-2000:]
    finally:
        await threads.deferToThread(proxy.close)
    assert len(proxy.sessions) == 2
    up = bytes(proxy.sessions[1]["up"])
    down = bytes(proxy.sessions[1]["down"])
    # mutt enabled QRESYNC and asked only for what changed since its cached modseq
    # (mutt 2.2 does it as SELECT (CONDSTORE) then UID FETCH (CHANGEDSINCE n VANISHED))...
    assert b"ENABLE QRESYNC" in up, up[-2000:]
    commands = [line for line in up.split(b"\r\n") if b"FETCH" in line]
    assert commands and all(re.search(rb"\(CHANGEDSINCE \d+ VANISHED\)", line)
                            for line in commands), up[-2000:]
    # ...and heard of exactly the 2 expunges and the 3 flag changes, nothing per message.
    assert re.search(rb"\* VANISHED \(EARLIER\) 20,700\r\n", down), down[-3000:]
    fetched = re.findall(rb"\* \d+ FETCH \(UID (\d+) FLAGS \(([^)]*)\)", down)
    assert sorted(int(u) for u, _ in fetched) == [10, 500, 990], down[-3000:]
    assert b"qresync" not in down  # no header was fetched again
    assert len(down) < len(first_down) // 20
    assert took < 30
