"""Slow clients for the abuse tests and ``bench/abuse.py``.

``Trickler`` holds many connections that each send one byte every few seconds and
never finish a line, from several loopback source addresses, reconnecting whenever
the server closes one, the way a slowloris attacker keeps a server's slots full.
``LegitimateSender`` is the victim: a normal ``smtplib`` client that sends one
message per session every few seconds and records how each session went.
All traffic is loopback; every loop is bounded in time.
"""

from __future__ import annotations

import errno
import selectors
import smtplib
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage


@dataclass
class _Slot:
    source: str
    sock: socket.socket | None = None
    next_byte: float = 0.0
    retry_at: float = 0.0


@dataclass
class TricklerStats:
    connects: int = 0
    closed_by_server: int = 0
    bytes_sent: int = 0
    #: The first line the server sent when it closed a trickling session, by text.
    goodbyes: dict[str, int] = field(default_factory=dict)


class Trickler:
    """``count`` connections spread over ``sources``, one byte each every ``interval`` s."""

    def __init__(self, port: int, sources: list[str], count: int, interval: float = 3.0,
                 host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self.interval = interval
        self.slots = [_Slot(sources[i % len(sources)]) for i in range(count)]
        self.stats = TricklerStats()
        self._sel = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inbox: dict[socket.socket, bytes] = {}

    def start(self) -> Trickler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for slot in self.slots:
            self._drop(slot, counted=False)
        self._sel.close()

    def open_count(self) -> int:
        return sum(1 for s in self.slots if s.sock is not None)

    def _connect(self, slot: _Slot, now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((slot.source, 0))
            sock.setblocking(False)
            err = sock.connect_ex((self.host, self.port))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, "connect")
        except OSError:
            sock.close()
            slot.retry_at = now + 1.0
            return
        slot.sock = sock
        # Spread the first bytes over the interval, as independent clients would.
        slot.next_byte = now + self.interval * (0.2 + 0.8 * (hash(id(slot)) % 97) / 97)
        self._inbox[sock] = b""
        self._sel.register(sock, selectors.EVENT_READ, slot)
        self.stats.connects += 1

    def _drop(self, slot: _Slot, counted: bool = True) -> None:
        sock, slot.sock = slot.sock, None
        if sock is None:
            return
        data = self._inbox.pop(sock, b"")
        if counted:
            self.stats.closed_by_server += 1
            lines = [ln for ln in data.split(b"\r\n") if ln]
            if len(lines) > 1:  # the greeting, then the goodbye
                text = lines[-1].decode("ascii", "replace")[:80]
                self.stats.goodbyes[text] = self.stats.goodbyes.get(text, 0) + 1
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()
        slot.retry_at = time.monotonic() + 0.5

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for slot in self.slots:
                if slot.sock is None:
                    if now >= slot.retry_at:
                        self._connect(slot, now)
                elif now >= slot.next_byte:
                    try:
                        slot.sock.send(b"X")
                        self.stats.bytes_sent += 1
                    except BlockingIOError:
                        pass
                    except OSError:
                        self._drop(slot)
                        continue
                    slot.next_byte = now + self.interval
            for key, _ in self._sel.select(timeout=0.05):
                slot = key.data
                sock = slot.sock
                if sock is None:
                    continue
                try:
                    chunk = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    self._drop(slot)
                    continue
                if not chunk:
                    self._drop(slot)
                else:
                    self._inbox[sock] = (self._inbox.get(sock, b"") + chunk)[-512:]


@dataclass
class LegitimateSender:
    """Sends one message per SMTP session every ``interval`` seconds from ``source``."""

    port: int
    source: str = "127.0.0.1"
    interval: float = 5.0
    rcpt: str = "alice@example.test"
    host: str = "127.0.0.1"
    served: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def run(self, duration: float) -> None:
        end = time.monotonic() + duration
        n = 0
        while time.monotonic() < end:
            start = time.monotonic()
            n += 1
            msg = EmailMessage()
            msg["From"] = "someone@remote.test"
            msg["To"] = self.rcpt
            msg["Subject"] = f"legitimate {n}"
            msg.set_content("hello\n")
            try:
                with smtplib.SMTP(self.host, self.port, source_address=(self.source, 0),
                                  timeout=20) as s:
                    s.send_message(msg)
                self.served += 1
                self.latencies.append(time.monotonic() - start)
            except (smtplib.SMTPException, OSError) as e:
                self.failures.append(f"session {n}: {type(e).__name__}: {e}"[:200])
            time.sleep(max(0.0, self.interval - (time.monotonic() - start)))
