"""TCP socket options shared by the request/response protocols.

Two halves of one problem, Nagle's algorithm meeting delayed ACKs:

- **Our replies** must not wait for the client's ACK of the previous one:
  ``send_at_once`` turns Nagle off on every connection.
- **The client's split writes** must not wait for our ACK. A client that sends a
  request in two writes (Python's imaplib sends an APPEND literal, then the final CRLF;
  an SMTP client may send the body, then ``.\\r\\n``) has Nagle on: its second, small
  write waits until the first is acknowledged. The kernel delays that ACK (40 ms on
  Linux) hoping to piggyback it on our reply, but there is no reply until the
  request is complete. ``QuickAck.now`` is called by a protocol whenever it has read
  bytes it will not answer at once; it sets ``TCP_QUICKACK``, which sends the
  pending ACK immediately (Linux; elsewhere it does nothing). Dovecot does the same
  before each read of a literal.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import ISSLTransport, ISystemHandle
from twisted.internet.tcp import Connection
from twisted.protocols.policies import ProtocolWrapper

#: Linux only; on other systems ``QuickAck`` does nothing.
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
#: Transport wrappers (limits, TLS) above the TCP transport are at most this deep.
_MAX_WRAPPERS = 8


def send_at_once(transport: Any, sock: socket.socket | None = None) -> None:
    """Turn off Nagle's algorithm on ``transport`` (through any protocol wrappers),
    or straight on its TCP socket ``sock`` when the caller has it at hand
    (``DirectWriter.socket``: no walk through the wrappers for it, issue 18).

    A server that has just sent a reply the client does not answer (two pipelined
    ``250``s, an IMAP FETCH body) would otherwise hold its next small reply until
    the client's delayed ACK, up to 40 ms later: with BDAT pipelined after MAIL and
    RCPT that halved relay throughput. Replies are already written once per reactor
    turn, so nothing is gained by Nagle's coalescing.
    """
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # closed under us
            pass
        return
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is None:
        return
    try:
        set_no_delay(True)
    except OSError:  # not a TCP socket (a UNIX socket endpoint)
        pass


def tcp_socket(transport: Any) -> socket.socket | None:
    """The TCP socket under ``transport`` and its protocol wrappers, or None.

    ``getHandle()`` (ISystemHandle) is the public way to a transport's socket; a TLS
    wrapper answers it with its TLS connection instead, so wrappers are walked down
    through their ``transport``.
    """
    for _ in range(_MAX_WRAPPERS):
        if ISystemHandle.providedBy(transport):
            handle = transport.getHandle()
            if isinstance(handle, socket.socket):
                tcp = handle.family in (socket.AF_INET, socket.AF_INET6)
                return handle if tcp and handle.type == socket.SOCK_STREAM else None
        if not isinstance(transport, ProtocolWrapper):
            return None
        transport = transport.transport
    return None


class QuickAck:
    """Acknowledge received bytes now, for a connection's protocol (see the module).

    Built once per connection (the socket is looked up once); ``now()`` costs one
    ``setsockopt`` and is meant for reads that leave a request incomplete, not for
    every read: when a reply follows at once it carries the ACK for free.
    """

    def __init__(self, transport: Any, sock: socket.socket | None = None) -> None:
        """``sock``: the TCP socket under ``transport`` if the caller found it already
        (``DirectWriter.socket``); else it is looked up here."""
        if _TCP_QUICKACK is None:
            self._socket = None
        else:
            self._socket = sock if sock is not None else tcp_socket(transport)

    def now(self) -> None:
        if self._socket is None or _TCP_QUICKACK is None:
            return
        try:
            self._socket.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except OSError:  # closed under us; nothing to acknowledge any more
            self._socket = None


def plain_socket(transport: Any) -> socket.socket | None:
    """The TCP socket under ``transport`` when every layer above it passes writes
    through unchanged (``ProtocolWrapper``'s own ``write``) and none is TLS; else None."""
    for _ in range(_MAX_WRAPPERS):
        if ISSLTransport.providedBy(transport):
            return None
        if isinstance(transport, ProtocolWrapper):
            if type(transport).write is not ProtocolWrapper.write:
                return None
            transport = transport.transport
            continue
        if isinstance(transport, Connection):
            return tcp_socket(transport)
        return None
    return None


class DirectWriter:
    """Writes a connection's replies straight to its socket while nothing is queued.

    Twisted's ``write`` queues the bytes, asks the reactor to watch the socket for
    writing (one ``epoll_ctl``), sends on the next turn and stops watching (another):
    for a short reply that the kernel takes whole, that is two system calls and a
    reactor event more than the ``send`` itself, which SMTP paid seven times a
    message. Here a reply is sent at once; only when the kernel does not take all of
    it does the rest go to ``transport.write``, and from then on everything does (so
    bytes never overtake queued ones). Every write of the protocol must go through
    ``write``; ``stop()`` before TLS starts. Without a plain TCP socket (TLS, a UNIX
    socket, a test transport) this is just ``transport.write``.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._socket = plain_socket(transport)
        self._plain = self._socket  # kept for ``resume``; None once stopped
        #: The plain TCP socket found at connect (None: TLS, a UNIX socket, a test
        #: transport), for the protocol's other socket options.
        self.socket = self._socket

    def write(self, data: bytes) -> None:
        sock = self._socket
        if sock is not None:
            try:
                sent = sock.send(data)
            except OSError:  # full (EAGAIN) or broken: Twisted takes it from here
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
            self._socket = None
        self._transport.write(data)

    def resume(self) -> None:
        """Straight to the socket again: the transport has sent everything it held.

        For a streaming producer's ``resumeProducing``: Twisted's transports resume a
        paused producer only once their write buffer is empty (``FileDescriptor.doWrite``),
        so nothing queued can be overtaken. A long response (FETCH of a whole folder)
        then goes out in direct sends again after each time the client fell behind,
        instead of through the reactor for the rest of the connection."""
        self._socket = self._plain

    def stop(self) -> None:
        """From now on through the transport (TLS is about to start, or it closed)."""
        self._socket = self._plain = None
