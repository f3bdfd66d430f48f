"""A scripted remote SMTP server for fault injection in outbound tests (real sockets).

Replies are chosen per command by callables on the factory, so a test can answer
451 first and 250 later, reject one recipient, or break the STARTTLS handshake.

Hostile modes (issue 21), set on the factory:

- ``hold = N``: the first N connections get no greeting and are kept in ``held``
  (the test releases or closes them);
- ``early_reply = "250 …"`` with ``early_after = 0``: sent in the same write as the
  ``354`` to DATA; ``early_after = n``: sent once n octets of the body have come.
  The server stays in DATA mode either way, so whatever the client writes next lands
  in that body (``bodies_cut`` keeps bodies whose connection ended before the dot);
- ``endless = "fast" | "drip"``: the EHLO reply never ends, ``250-`` lines as fast as
  the socket takes them (``endless_sent`` counts the octets) or one every
  ``drip_interval`` seconds;
- ``close_after_mail``: hang up right after the reply to MAIL (for an unterminated
  ``550-`` that ends with the connection);
- ``discard_body``: keep only each body's SHA-256 (``digests``), for huge messages.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from twisted.internet import defer, protocol
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.protocols.basic import LineReceiver


@dataclass
class Received:
    mail_from: str
    mail_line: str
    rcpts: list[str]
    rcpt_lines: list[str]
    data: bytes
    tls: bool


class ScriptedSMTP(LineReceiver):
    MAX_LENGTH = 1 << 20

    def connectionMade(self):
        f = self.factory
        f.connections += 1
        f.open += 1
        f.last = self
        self.transcript: list[str] = []
        f.transcripts.append(self.transcript)
        self.tls = False
        self.reset()
        self.data_mode = False
        self.data_bytes = 0
        self.early_sent = False
        self.writer = None
        if len(f.held) < f.hold:
            f.held.append(self)
            return
        self.sendLine(f.greeting.encode())

    def connectionLost(self, reason=None):
        f = self.factory
        f.open -= 1
        if self.writer is not None and self.writer.running:
            self.writer.stop()
        if self.data_mode:
            f.bodies_cut.append(b"".join(ln + b"\r\n" for ln in self.lines))
        f.closed_at.append(len(f.transcripts))

    def _endless(self, mode):
        f = self.factory
        line = b"250-" + b"x" * 70 + b"\r\n"
        if mode == "drip":
            def drip():
                self.transport.write(line)
                f.endless_sent += len(line)
            self.writer = LoopingCall(drip)
            self.writer.start(f.drip_interval)
            return

        class Flood:  # a push producer: write whenever the socket has room
            def __init__(self, proto):
                self.proto, self.paused, self.stopped = proto, False, False

            def resumeProducing(self):
                self.paused = False
                while not self.paused and not self.stopped:
                    self.proto.transport.write(line * 512)
                    f.endless_sent += len(line) * 512

            def pauseProducing(self):
                self.paused = True

            def stopProducing(self):
                self.stopped = True

        flood = Flood(self)
        self.transport.registerProducer(flood, True)
        from twisted.internet import reactor
        reactor.callLater(0, flood.resumeProducing)

    def reset(self):
        self.mail_from = None
        self.mail_line = ""
        self.rcpts = []
        self.rcpt_lines = []
        self.lines = []

    def rawDataReceived(self, data):
        """A BDAT chunk (RFC 3030): consumed in full even when it will be refused."""
        take, rest = data[: self.chunk_left], data[self.chunk_left:]
        self.chunks += take
        self.chunk_left -= len(take)
        if self.chunk_left:
            return
        f = self.factory
        if not self.rcpts:
            answer = "554 5.5.1 no valid recipients"
        elif not self.chunk_last:
            answer = f"250 2.0.0 {len(take)} octets"
        else:
            answer = f.data_reply(self.rcpts, self.chunks)
        if self.chunk_last or not self.rcpts:
            if answer is not None and answer.startswith("2"):
                f.received.append(Received(self.mail_from, self.mail_line, list(self.rcpts),
                                           list(self.rcpt_lines), self.chunks, self.tls))
                f.notify()
            self.chunks = b""
            self.reset()
        if answer is not None:
            self.reply(answer)
        self.setLineMode(rest)

    def reply(self, text):
        self.sendLine(text.encode())

    def lineReceived(self, line):
        f = self.factory
        if self.data_mode:
            if line == b"." and f.discard_body:
                self.data_mode = False
                f.digests.append(self.digest.hexdigest())
                self.reset()
                self.reply("250 2.0.0 counted")
                return
            if f.discard_body:
                self.data_bytes += len(line) + 2
                f.data_bytes = max(f.data_bytes, self.data_bytes)
                self.digest.update((line[1:] if line.startswith(b".") else line) + b"\r\n")
                return
            if line == b".":
                self.data_mode = False
                data = b"".join(
                    (ln[1:] if ln.startswith(b".") else ln) + b"\r\n" for ln in self.lines
                )
                answer = f.data_reply(self.rcpts, data)
                if answer is None:  # stay silent: the client must time out
                    return
                if answer.startswith("2"):
                    f.received.append(Received(self.mail_from, self.mail_line, list(self.rcpts),
                                               list(self.rcpt_lines), data, self.tls))
                    f.notify()
                self.reset()
                self.reply(answer)
                if answer.startswith("421"):
                    self.transport.loseConnection()
            else:
                self.lines.append(line)
                self.data_bytes += len(line) + 2
                if (f.early_reply and f.early_after and not self.early_sent
                        and self.data_bytes >= f.early_after):
                    self.early_sent = True
                    self.reply(f.early_reply)
            return
        text = line.decode("utf-8", "replace")
        cmd = text.split(" ", 1)[0].split(":", 1)[0].upper()
        f.commands.append(text)
        self.transcript.append(text)
        if cmd == "EHLO" and f.endless:
            self.reply(f"250-{f.hostname}")
            self._endless(f.endless)
        elif cmd == "EHLO":
            exts = list(f.extensions)
            if f.tls_options is not None and not self.tls:
                exts.append("STARTTLS")
            lines = [f.hostname] + exts
            for i, ext in enumerate(lines):
                sep = " " if i == len(lines) - 1 else "-"
                self.reply(f"250{sep}{ext}")
        elif cmd == "HELO":
            self.reply(f"250 {f.hostname}")
        elif cmd == "STARTTLS":
            if f.break_tls:
                self.reply("220 go ahead")
                self.transport.write(b"this is not a TLS server hello\r\n" * 4)
                self.transport.loseConnection()
                return
            self.reply("220 go ahead")
            self.transport.startTLS(f.tls_options)
            self.tls = True
            self.reset()
        elif cmd == "MAIL":
            answer = f.mail_reply(text)
            if answer.startswith("2"):
                self.mail_from = text.split(":", 1)[1].split(">")[0].lstrip(" <")
                self.mail_line = text
            self.reply(answer)
            if f.close_after_mail:
                self.transport.loseConnection()
        elif cmd == "RCPT":
            address = text.split(":", 1)[1].split(">")[0].lstrip(" <")
            answer = f.rcpt_reply(address)
            if answer.startswith("2"):
                self.rcpts.append(address)
                self.rcpt_lines.append(text)
            self.reply(answer)
        elif cmd == "DATA":
            if not self.rcpts:
                self.reply("554 5.5.1 no valid recipients")
            else:
                self.data_mode = True
                self.digest = hashlib.sha256()
                if f.early_reply and not f.early_after:
                    self.early_sent = True
                    self.transport.write(f"354 go on\r\n{f.early_reply}\r\n".encode())
                else:
                    self.reply("354 go on")
        elif cmd == "BDAT" and "CHUNKING" in f.extensions:
            words = text.split()
            self.chunk_left = int(words[1])
            self.chunk_last = len(words) > 2 and words[2].upper() == "LAST"
            self.chunks = getattr(self, "chunks", b"")
            self.setRawMode()
            if self.chunk_left == 0:
                self.rawDataReceived(b"")
        elif cmd == "RSET":
            self.reset()
            self.reply("250 ok")
        elif cmd == "NOOP":
            self.reply("250 ok")
        elif cmd == "QUIT":
            self.reply("221 bye")
            self.transport.loseConnection()
        else:
            self.reply("500 5.5.2 what?")


class ScriptedFactory(protocol.Factory):
    protocol = ScriptedSMTP

    def __init__(self, hostname="remote.test", extensions=("PIPELINING", "8BITMIME", "SIZE 0"),
                 tls_options=None):
        self.hostname = hostname
        self.extensions = list(extensions)
        self.tls_options = tls_options
        self.break_tls = False
        self.greeting = f"220 {hostname} ESMTP scripted"
        self.received: list[Received] = []
        self.commands: list[str] = []
        self.connections = 0
        self.open = 0
        self.transcripts: list[list[str]] = []
        self.closed_at: list[int] = []
        # Hostile modes: see the module docstring.
        self.hold = 0
        self.held: list[ScriptedSMTP] = []
        self.early_reply: str | None = None
        self.early_after = 0
        self.bodies_cut: list[bytes] = []
        self.endless: str | None = None
        self.drip_interval = 0.05
        self.endless_sent = 0
        self.close_after_mail = False
        # Keep only a SHA-256 of each body (unstuffed) and the largest size seen.
        self.discard_body = False
        self.digests: list[str] = []
        self.data_bytes = 0
        self._waiters: list[tuple[int, defer.Deferred]] = []
        self.mail_reply = lambda line: "250 2.1.0 ok"
        self.rcpt_reply = lambda address: "250 2.1.5 ok"
        self.data_reply = lambda rcpts, data: "250 2.0.0 queued"

    def notify(self):
        for n, d in list(self._waiters):
            if len(self.received) >= n:
                self._waiters.remove((n, d))
                d.callback(self.received)

    def wait_for(self, n: int) -> defer.Deferred:
        d = defer.Deferred()
        self._waiters.append((n, d))
        self.notify()
        return d


async def listen(factory, reactor=None, interface="127.0.0.1"):
    """Start ``factory`` on an ephemeral loopback port; returns the IListeningPort."""
    if reactor is None:
        from twisted.internet import reactor
    return await serverFromString(reactor, f"tcp:0:interface={interface}").listen(factory)
