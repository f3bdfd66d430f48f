"""A scripted remote SMTP server for fault injection in outbound tests (real sockets).

Replies are chosen per command by callables on the factory, so a test can answer
451 first and 250 later, reject one recipient, or break the STARTTLS handshake.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer, protocol
from twisted.internet.endpoints import serverFromString
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
        self.factory.connections += 1
        self.tls = False
        self.reset()
        self.data_mode = False
        self.sendLine(self.factory.greeting.encode())

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
            return
        text = line.decode("utf-8", "replace")
        cmd = text.split(" ", 1)[0].split(":", 1)[0].upper()
        f.commands.append(text)
        if cmd == "EHLO":
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
