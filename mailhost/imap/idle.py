"""IDLE (RFC 2177): push folder changes while the client waits.

While idling, queued EXISTS/EXPUNGE/FETCH updates go out as soon as the store's
listener hears of them. Only ``DONE`` ends IDLE; any other line is answered BAD
and also ends it. The session's inactivity timer keeps running (input resets it),
so a client must re-issue IDLE within ``imap.timeout`` (RFC 2177: every 29 min);
a ``* OK Still here`` keepalive every ``KEEPALIVE`` seconds keeps NAT state alive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.task import LoopingCall

from mailhost.imap import parser
from mailhost.imap.responses import Bad
from mailhost.imap.states import AUTH
from mailhost.store.interfaces import StoreError

if TYPE_CHECKING:
    from mailhost.imap.server import IMAPServer

KEEPALIVE = 120.0


async def idle(s: IMAPServer, cmd: parser.Command) -> bytes:
    if cmd.args:
        raise Bad("IDLE takes no arguments")
    s.send(b"+ idling\r\n")
    s.idling = True
    if s.selected is not None:
        # What other programs changed since the last command; from here on the store
        # watches the folder (inotify, or polling) and the listener pushes at once.
        try:
            await s.selected.folder.refresh()
        except StoreError:
            pass  # the folder went away: the listener has said so
        if not s.alive:
            s.idling = False
            return b"IDLE terminated"
    await s.send_all_updates(allow_expunge=True)  # with CONTEXT and NOTIFY updates
    keepalive = LoopingCall(s.send, b"* OK Still here\r\n")
    keepalive.clock = s.reactor
    keepalive.start(KEEPALIVE, now=False)
    try:
        line = await s.read_line()
    finally:
        s.idling = False
        keepalive.stop()
    if line is None:
        return b"IDLE terminated"
    if line.strip().upper() != b"DONE":
        raise Bad("Expected DONE to end IDLE")
    return b"IDLE terminated"


HANDLERS = {"IDLE": (AUTH, idle)}
