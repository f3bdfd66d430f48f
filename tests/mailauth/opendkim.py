"""OpenDKIM (Debian ``opendkim`` 2.11) driven by the tests: a private instance per test.

- ``verify(message, dns_port)``: ``opendkim -t`` evaluates a message file; its
  libunbound resolver is pointed at our test DNS server on loopback (unbound refuses
  to ask localhost, and serves ``test.`` itself, unless told otherwise).
- ``OpenDKIMSigner``: ``opendkim`` as a milter on a loopback port, fed one message by
  the minimal milter client below (protocol version 6, no step skipped, every step
  answered), returning the headers OpenDKIM adds. ``opendkim-testmsg`` cannot stand
  in: it signs rsa-sha1 only, which RFC 8301 forbids verifiers to accept.
Missing binaries fail the tests (no skips).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time

from tests.ports import free_port

OPENDKIM = "/usr/sbin/opendkim"


def _unbound_conf(directory: str, dns_port: int) -> str:
    path = os.path.join(directory, "unbound.conf")
    with open(path, "w") as f:
        f.write("server:\n    do-not-query-localhost: no\n    local-zone: \"test.\" nodefault\n"
                f"forward-zone:\n    name: \".\"\n    forward-addr: 127.0.0.1@{dns_port}\n")
    return path


def verify(directory: str, message: bytes, dns_port: int) -> str:
    """OpenDKIM's one-line verdict on ``message`` (blocking: run it in a thread)."""
    conf = os.path.join(directory, "verify.conf")
    with open(conf, "w") as f:
        f.write(f"Syslog no\nMode v\nResolverConfiguration {_unbound_conf(directory, dns_port)}\n")
    path = os.path.join(directory, "message.eml")
    with open(path, "wb") as f:
        f.write(message)
    proc = subprocess.run([OPENDKIM, "-x", conf, "-t", path], capture_output=True, timeout=60)
    return (proc.stdout + proc.stderr).decode("utf-8", "replace").strip()



class OpenDKIMSigner:
    """A private ``opendkim`` milter that signs with one key; stop() kills it by PID."""

    def __init__(self, directory: str, domain: str, selector: str, key_path: str,
                 algorithm: str) -> None:
        self.directory = directory
        self.port = free_port()
        conf = os.path.join(directory, f"sign-{selector}.conf")
        with open(conf, "w") as f:
            f.write("Syslog no\nMode s\nBackground no\nCanonicalization relaxed/relaxed\n"
                    "RequireSafeKeys no\n"
                    f"Domain {domain}\nSelector {selector}\nKeyFile {key_path}\n"
                    f"SignatureAlgorithm {algorithm}\nSocket inet:{self.port}@127.0.0.1\n"
                    f"PidFile {os.path.join(directory, selector + '.pid')}\n")
        self.log = open(os.path.join(directory, f"opendkim-{selector}.log"), "wb")
        self.proc = subprocess.Popen([OPENDKIM, "-f", "-x", conf], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"opendkim did not start: {self.output()}") from None
                time.sleep(0.05)

    def output(self) -> str:
        with open(self.log.name, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.log.close()

    def sign(self, message: bytes, mail_from: str, rcpt: str) -> bytes:
        """The header fields OpenDKIM adds to ``message`` (CRLF line ends)."""
        head, _, body = message.partition(b"\r\n\r\n")
        headers: list[tuple[bytes, bytes]] = []
        for line in head.split(b"\r\n"):
            if line[:1] in (b" ", b"\t"):
                name, value = headers[-1]
                headers[-1] = (name, value + b"\r\n" + line)
            else:
                name, _, value = line.partition(b":")
                headers.append((name, value.lstrip(b" ")))
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            client = _Milter(s)
            client.send(b"O", struct.pack("!III", 6, 0x1FF, 0))
            client.expect(b"O")
            client.step(b"C", b"localhost\0" + b"4" + struct.pack("!H", 25000) + b"127.0.0.1\0")
            client.step(b"H", b"localhost\0")
            client.step(b"M", f"<{mail_from}>\0".encode())
            client.step(b"R", f"<{rcpt}>\0".encode())
            for name, value in headers:
                client.step(b"L", name + b"\0" + value + b"\0")
            client.step(b"N", b"")
            if body:
                for i in range(0, len(body), 65535):
                    client.step(b"B", body[i:i + 65535])
            added = client.end_of_message()
            client.send(b"Q", b"")
        return b"".join(name + b": " + value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"
                        for name, value in added)


class _Milter:
    """The MTA side of the milter protocol, as far as signing needs."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, command: bytes, data: bytes) -> None:
        self.sock.sendall(struct.pack("!I", len(data) + 1) + command + data)

    def read(self) -> tuple[bytes, bytes]:
        size = struct.unpack("!I", self._exactly(4))[0]
        packet = self._exactly(size)
        return packet[:1], packet[1:]

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("milter closed the connection")
            out += chunk
        return out

    def expect(self, command: bytes) -> bytes:
        got, data = self.read()
        if got != command:
            raise AssertionError(f"milter answered {got!r} {data!r}, expected {command!r}")
        return data

    def step(self, command: bytes, data: bytes) -> None:
        self.send(command, data)
        got, data = self.read()
        if got not in (b"c", b"a"):
            raise AssertionError(f"milter answered {got!r} {data!r} to {command!r}")

    def end_of_message(self) -> list[tuple[bytes, bytes]]:
        self.send(b"E", b"")
        added = []
        for _ in range(100):
            got, data = self.read()
            if got == b"+":  # add header
                name, value, _ = data.split(b"\0", 2)
                added.append((name, value))
            elif got == b"i":  # insert header at index
                name, value, _ = data[4:].split(b"\0", 2)
                added.append((name, value))
            elif got in (b"a", b"c"):
                return added
            elif got in (b"r", b"t", b"d", b"y"):
                raise AssertionError(f"milter refused the message: {got!r} {data!r}")
        raise AssertionError("milter sent too many modifications")
