"""mailhost.limits over real loopback sockets: per-address, overall and rate limits.

Clients bind to distinct loopback source addresses (127.0.0.2, 127.0.0.3 ...) so one
machine can play several client addresses; Linux routes all of 127/8 to lo.
"""

from __future__ import annotations

import socket
import ssl

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface.verify import verifyObject

from mailhost import config as cfg
from mailhost.limits import (
    ConnectionLimiter,
    ConnectionLimits,
    KindLimits,
    LimitingFactory,
    chain,
    client_key,
    refusal,
)
from mailhost.settings import LimitsSettings
from mailhost.tls import server_options, write_selfsigned


class Greeter(Protocol):
    """Stands in for a mail protocol: greets, echoes, counts how often it was built."""

    def connectionMade(self):  # noqa: N802
        self.factory.made += 1
        self.transport.write(b"+OK hello\r\n")

    def dataReceived(self, data):  # noqa: N802
        self.transport.write(data)


class GreeterFactory(Factory):
    protocol = Greeter

    def __init__(self):
        self.made = 0
        self.built = 0

    def buildProtocol(self, addr):  # noqa: N802
        self.built += 1
        return super().buildProtocol(addr)


def connect(port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                 source_address=(source, 0))
    return s


def read_line(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def read_all(s: socket.socket) -> bytes:
    buf = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return buf
        buf += chunk


def open_greeted(port: int, source: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    s = connect(port, source)
    return s, read_line(s)


def refused_reply(port: int, source: str = "127.0.0.1") -> bytes:
    """Connect and read until the server closes (a refused client sees EOF)."""
    with connect(port, source) as s:
        return read_all(s)


@pytest.fixture
def listen():
    ports = []

    @defer.inlineCallbacks
    def start(factory):
        port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        ports.append(port)
        return port.getHost().port

    yield start
    for p in ports:
        p.stopListening()


def make(kind="pop3", max_connections=0, max_per_ip=0, rate=0.0, burst=10, exempt=(),
         clock=None, hostname="mx.test"):
    inner = GreeterFactory()
    limiter = ConnectionLimiter(rate, burst, exempt, clock=clock or reactor)
    factory = LimitingFactory(inner, kind, limiter, KindLimits(max_connections, max_per_ip),
                              hostname)
    return inner, limiter, factory


def test_wrapper_provides_protocol_factory():
    _, _, factory = make()
    assert verifyObject(IProtocolFactory, factory)


def test_refusal_lines_are_each_protocols_own():
    assert refusal("smtp", "mx.test", "192.0.2.7") == (
        b"421 4.7.0 mx.test Error: too many connections from 192.0.2.7\r\n")
    assert refusal("smtp", "mx.test", "192.0.2.7", "max_connections") == (
        b"421 4.7.0 mx.test Error: too many connections to this server; try again later\r\n")
    assert refusal("smtp", "mx.test", "192.0.2.7", "connection_rate") == (
        b"421 4.7.0 mx.test Error: too many new connections from 192.0.2.7; slow down\r\n")
    assert refusal("submission", "mx.test", "192.0.2.7").startswith(b"421 4.7.0 mx.test ")
    assert refusal("pop3", "mx.test", "x") == b"-ERR [SYS/TEMP] Too many connections from x\r\n"
    assert refusal("imap", "mx.test", "x", "max_connections") == (
        b"* BYE [UNAVAILABLE] Too many connections to this server; try again later\r\n")
    with pytest.raises(ValueError):
        refusal("gopher", "mx.test", "x")


def test_ipv6_clients_count_per_64():
    assert client_key("2001:db8:1:2:3:4:5:6") == client_key("2001:db8:1:2:ffff::1")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("192.0.2.1") == "192.0.2.1"


@pytest_twisted.inlineCallbacks
def test_per_address_limit_refuses_without_building_the_protocol(listen):
    inner, limiter, factory = make(kind="smtp", max_per_ip=2)
    port = yield listen(factory)

    def scenario():
        a, ga = open_greeted(port, "127.0.0.2")
        b, gb = open_greeted(port, "127.0.0.2")
        third = refused_reply(port, "127.0.0.2")
        other, go = open_greeted(port, "127.0.0.3")  # another address is unaffected
        a.close()
        return ga, gb, third, go, (a, b, other)

    ga, gb, third, go, socks = yield threads.deferToThread(scenario)
    assert ga == gb == go == b"+OK hello\r\n"
    assert third == b"421 4.7.0 mx.test Error: too many connections from 127.0.0.2\r\n"
    assert inner.built == 3  # the refused connection never reached the wrapped factory
    assert factory.refused == 1

    # Once a slot is free again (the server saw a's close), the address is admitted.
    yield poll(lambda: limiter.per_client.get(("smtp", "127.0.0.2")) == 1)
    s, greeting = yield threads.deferToThread(open_greeted, port, "127.0.0.2")
    assert greeting == b"+OK hello\r\n"
    for sock in (s, *socks):
        sock.close()
    yield poll(lambda: limiter.total.get("smtp") == 0)
    assert limiter.per_client == {}


@pytest_twisted.inlineCallbacks
def test_overall_limit_covers_all_addresses(listen):
    inner, limiter, factory = make(kind="imap", max_connections=2, exempt=["127.0.0.0/8"])
    port = yield listen(factory)

    def scenario():
        a, _ = open_greeted(port, "127.0.0.2")
        b, _ = open_greeted(port, "127.0.0.3")
        third = refused_reply(port, "127.0.0.4")
        return third, (a, b)

    third, socks = yield threads.deferToThread(scenario)
    # Exempt networks still count towards the overall limit.
    assert third == (b"* BYE [UNAVAILABLE] Too many connections to this server; "
                     b"try again later\r\n")
    assert inner.built == 2
    for s in socks:
        s.close()


@pytest_twisted.inlineCallbacks
def test_rate_limit_is_a_token_bucket_per_address(listen):
    clock = task.Clock()
    inner, limiter, factory = make(kind="pop3", rate=60.0, burst=3, clock=clock)
    port = yield listen(factory)

    def burst():
        got = []
        for _ in range(4):
            s, line = open_greeted(port, "127.0.0.5")
            got.append(line)
            s.close()
        return got

    got = yield threads.deferToThread(burst)
    assert got[:3] == [b"+OK hello\r\n"] * 3
    assert got[3] == b"-ERR [SYS/TEMP] Too many new connections from 127.0.0.5; slow down\r\n"
    # Another address has its own bucket.
    sock, other = yield threads.deferToThread(open_greeted, port, "127.0.0.6")
    sock.close()
    assert other == b"+OK hello\r\n"
    # 60/min refills one token a second.
    clock.advance(1.0)
    got = yield threads.deferToThread(burst)
    assert got[0] == b"+OK hello\r\n"
    assert got[1] == b"-ERR [SYS/TEMP] Too many new connections from 127.0.0.5; slow down\r\n"


@pytest_twisted.inlineCallbacks
def test_exempt_networks_skip_per_address_and_rate(listen):
    inner, limiter, factory = make(kind="pop3", max_per_ip=1, rate=60.0, burst=1,
                                   exempt=["127.0.0.0/8", "::1/128"])
    port = yield listen(factory)

    def scenario():
        socks = [open_greeted(port, "127.0.0.1") for _ in range(5)]
        for s, _ in socks:
            s.close()
        return [g for _, g in socks]

    greetings = yield threads.deferToThread(scenario)
    assert greetings == [b"+OK hello\r\n"] * 5


@pytest_twisted.inlineCallbacks
def test_refused_client_input_is_ignored(listen):
    """Commands a refused client pipelines after connecting run nowhere."""
    inner, limiter, factory = make(kind="imap", max_per_ip=1)
    port = yield listen(factory)

    def scenario():
        a, _ = open_greeted(port, "127.0.0.7")
        with connect(port, "127.0.0.7") as s:
            s.sendall(b"a LOGIN x y\r\n")
            reply = read_all(s)
        a.close()
        return reply

    reply = yield threads.deferToThread(scenario)
    assert reply == b"* BYE [UNAVAILABLE] Too many connections from 127.0.0.7\r\n"
    assert inner.made == 1


def test_refused_client_that_never_reads_is_aborted():
    """A refused connection cannot be held open: it is aborted after REFUSAL_TIMEOUT.

    Driven on a StringTransport: over real sockets the kernel takes the short refusal
    at once and the close beats any check for the timer, so only a client with a full
    receive window ever needs the abort (and a test over sockets was a race).
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from mailhost.limits import REFUSAL_TIMEOUT

    clock = task.Clock()
    _inner, _limiter, factory = make(kind="pop3", max_connections=1, clock=clock)
    first = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1))
    first.makeConnection(StringTransport())
    refused = factory.buildProtocol(IPv4Address("TCP", "192.0.2.2", 2))
    transport = StringTransport()
    aborted = []
    transport.abortConnection = lambda: aborted.append(True)
    refused.makeConnection(transport)  # the client never reads; the close never completes
    assert transport.value() == (b"-ERR [SYS/TEMP] Too many connections to this server; "
                                 b"try again later\r\n")
    assert transport.disconnecting and not aborted
    clock.advance(REFUSAL_TIMEOUT - 0.1)
    assert not aborted
    clock.advance(0.2)
    assert aborted == [True]
    assert not clock.getDelayedCalls()


@pytest_twisted.inlineCallbacks
def test_implicit_tls_listener_refuses_inside_tls(listen, tmp_path):
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    write_selfsigned("mx.test", cert, key)
    options = server_options(cfg.TLSConfig(cert=cert, key=key))
    c = cfg.Config()
    c.server.hostname = "mx.test"
    c.limits.exempt_networks = []
    c.limits.connection_rate = 0
    c.imap.max_connections_per_ip = 1
    limits = ConnectionLimits.from_settings(LimitsSettings.from_config(c), reactor=reactor)
    inner = GreeterFactory()
    wrapped = limits.wrap("imap", TLSMemoryBIOFactory(options, False, inner))
    assert isinstance(wrapped, TLSMemoryBIOFactory)
    port = yield listen(wrapped)
    ctx = ssl.create_default_context(cafile=cert)

    def tls_connect():
        s = ctx.wrap_socket(connect(port, "127.0.0.8"), server_hostname="mx.test")
        return s, read_line(s)

    def scenario():
        a, ga = tls_connect()
        b, gb = tls_connect()
        a.close()
        b.close()
        return ga, gb

    ga, gb = yield threads.deferToThread(scenario)
    assert ga == b"+OK hello\r\n"
    assert gb == b"* BYE [UNAVAILABLE] Too many connections from 127.0.0.8\r\n"
    assert inner.built == 1


def test_limits_from_settings_uses_each_kinds_limits():
    c = cfg.Config()
    limits = ConnectionLimits.from_settings(LimitsSettings.from_config(c), reactor=task.Clock())
    assert limits.kinds["smtp"] == KindLimits(c.smtp.max_connections,
                                              c.smtp.max_connections_per_ip)
    assert limits.kinds["submission"] == limits.kinds["smtp"]
    assert limits.kinds["pop3"] == KindLimits(200, 20)
    assert limits.kinds["imap"] == KindLimits(500, 50)
    assert limits.limiter.is_exempt("127.0.0.1") and limits.limiter.is_exempt("::1")
    assert not limits.limiter.is_exempt("192.0.2.1")


def test_bad_exempt_network_is_a_one_line_config_error():
    c = cfg.Config()
    c.limits.exempt_networks = ["10.0.0.0/33"]
    with pytest.raises(cfg.ConfigError, match=r"^limits\.exempt_networks: "):
        ConnectionLimits.from_settings(LimitsSettings.from_config(c), reactor=task.Clock())


def test_limits_keys_load_from_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[limits]\nconnection_rate = 30\nconnection_burst = 5\n'
                 'exempt_networks = []\n[pop3]\nmax_connections_per_ip = 3\n')
    c = cfg.load(str(p))
    assert (c.limits.connection_rate, c.limits.connection_burst) == (30.0, 5)
    assert c.limits.exempt_networks == [] and c.pop3.max_connections_per_ip == 3


def test_bucket_table_stays_bounded():
    clock = task.Clock()
    limiter = ConnectionLimiter(60.0, 2, (), clock=clock, max_tracked=100)
    lim = KindLimits(0, 0)
    for i in range(10000):
        ip = f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}"
        assert limiter.admit("smtp", ip, lim) is None
        limiter.release("smtp", ip)
        if i % 50 == 0:
            clock.advance(5.0)
    assert len(limiter._buckets) <= 100
    assert limiter.per_client == {} and limiter.total["smtp"] == 0


def test_chain_puts_first_wrapper_outermost():
    seen = []

    def outer(kind, f):
        seen.append("outer")
        return ("outer", f)

    def inner(kind, f):
        seen.append("inner")
        return ("inner", f)

    assert chain(outer, None, inner)("smtp", "F") == ("outer", ("inner", "F"))
    assert seen == ["inner", "outer"]


def poll(predicate, timeout: float = 5.0, step: float = 0.02) -> defer.Deferred:
    """Deferred firing once ``predicate()`` is true (bounded in time)."""

    @defer.inlineCallbacks
    def run():
        waited = 0.0
        while not predicate():
            if waited > timeout:
                raise AssertionError("condition not reached")
            yield task.deferLater(reactor, step, lambda: None)
            waited += step

    return run()
