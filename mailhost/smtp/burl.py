"""BURL (RFC 4468): a submission client names message data by IMAP URL.

``BURL imap://alice@host/Sent;UIDVALIDITY=7/;UID=3;urlauth=submit+alice:internal:<token>
LAST`` adds what the URL names to the message under way, as a BDAT chunk of that size
would (RFC 4468 3.2: BURL and BDAT may be mixed, LAST ends the message; DATA after
either is refused, as after BDAT). The URL is resolved in-process through
``mailhost.urlfetch.IUrlFetcher`` (the IMAP listener's URLAUTH keys and the store:
protocols don't import each other), as a submission entity acting for the user who
authenticated: ``submit+<that user>``, ``authuser`` and ``anonymous`` URLs, and a URL
without URLAUTH only in that user's own mailboxes (the "trust relationship" case,
as Dovecot's submission service treats it).

Offered only on submission listeners (587/465) whose host has an IMAP URLAUTH key
store: EHLO says ``BURL imap`` (Dovecot too advertises it before AUTH; BURL itself needs
AUTH). Replies, from RFC 4468 and RFC 5248 as Dovecot words them:

- ``501 5.5.4`` no URL, not an IMAP URL, an end marker other than ``LAST``;
- ``530 5.7.0`` before AUTH; ``503 5.5.1`` before MAIL/RCPT; ``554 5.5.1`` no valid
  recipients (as BDAT);
- ``554 5.7.14`` no URLAUTH here (RFC 5248 2.4: "Trust relationship required");
- ``554 5.6.6`` the URL names nothing this user may have (RFC 4468: "Message content
  not available"); the transaction is then reset, as after a refused BDAT chunk, so no
  later LAST commits a message with a hole in it;
- ``552 5.3.4`` the message would exceed ``smtp.max_message_size``;
- then as BDAT: ``250 2.0.0 Ok: n octets received``, or after LAST the delivery's reply.

The fetched data is read into memory (bounded by the size limit) before it is handed
to the message, so no byte from the socket can slip into the chunk meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from mailhost.smtp.reply import Reply
from mailhost.urlfetch import SUBMISSION, IUrlFetcher

KEYWORD = "BURL imap"


def ehlo_keyword(fetcher: IUrlFetcher | None, submission: bool) -> str | None:
    """``BURL imap`` on a submission listener with a URL fetcher, else nothing."""
    return KEYWORD if submission and fetcher is not None else None


def parse(arg: str) -> tuple[str, bool]:
    """``(url, last)`` of ``burl-cmd = "BURL" SP absolute-URI [SP end-marker]``."""
    words = arg.split(" ")
    url = words[0] if words and words[0] else ""
    if not url:
        raise Reply(501, "5.5.4", "Syntax: BURL <imap-url> [LAST]")
    if url[:7].lower() != "imap://":
        raise Reply(501, "5.5.4", "Invalid chunk URL: only imap:// URLs are supported")
    if len(words) > 2:
        raise Reply(501, "5.5.4", "Invalid parameters")
    if len(words) == 2 and words[1].upper() != "LAST":
        raise Reply(501, "5.5.4", "Invalid end marker parameter")
    return url, len(words) == 2


async def fetch(fetcher: IUrlFetcher, url: str, user: str, room: int) -> bytes:
    """The octets ``url`` names for ``user``; at most ``room`` of them (else 552)."""
    part = await fetcher.fetch(url, user, SUBMISSION)
    if part is None:
        raise Reply(554, "5.6.6", "IMAP URL resolution failed")
    try:
        if part.size > room:
            raise Reply(552, "5.3.4", "Message size exceeds fixed limit")
        chunks = []
        got = 0
        while chunk := await part.read():
            got += len(chunk)
            if got > room:
                raise Reply(552, "5.3.4", "Message size exceeds fixed limit")
            chunks.append(chunk)
    finally:
        part.close()
    return b"".join(chunks)


async def _command(arg: str, *, fetcher: IUrlFetcher | None, submission: bool,
                   user: str | None, state: Callable[[], Reply | None], room: Callable[[], int],
                   add_chunk: Callable[[bytes, bool], Any],
                   answer: Callable[[Reply], Any], reset: Callable[[], None]) -> None:
    try:
        if not submission:
            raise Reply(502, "5.5.1", "Error: BURL is offered on submission only")
        url, last = parse(arg)
        if user is None:
            raise Reply(530, "5.7.0", "Authentication required")
        if fetcher is None:
            raise Reply(554, "5.7.14", "No IMAP URLAUTH access available")
        error = state()
        if error is not None:
            raise error
        try:
            data = await fetch(fetcher, url, user, room())
        except Reply:
            reset()
            raise
    except Reply as reply:
        done = answer(reply)
        if isinstance(done, defer.Deferred):
            await done
        return
    done = add_chunk(data, last)
    if isinstance(done, defer.Deferred):
        await done


def command(arg: str, **session: Any) -> defer.Deferred[None]:
    """BURL, for the session's callables (``SMTPServer.smtp_BURL`` names them): the
    Deferred keeps the session busy until the chunk is in (and, after LAST, the
    message committed and answered)."""
    return defer.Deferred.fromCoroutine(_command(arg, **session))
