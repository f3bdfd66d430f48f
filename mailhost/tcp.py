"""TCP socket options shared by the request/response protocols."""

from __future__ import annotations

from typing import Any


def send_at_once(transport: Any) -> None:
    """Turn off Nagle's algorithm on ``transport`` (through any protocol wrappers).

    A server that has just sent a reply the client does not answer (two pipelined
    ``250``s, an IMAP FETCH body) would otherwise hold its next small reply until
    the client's delayed ACK, up to 40 ms later: with BDAT pipelined after MAIL and
    RCPT that halved relay throughput. Replies are already written once per reactor
    turn, so nothing is gained by Nagle's coalescing.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is None:
        return
    try:
        set_no_delay(True)
    except OSError:  # not a TCP socket (a UNIX socket endpoint)
        pass
