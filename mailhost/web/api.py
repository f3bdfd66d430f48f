"""The REST API's handlers: one coroutine per route, JSON in and out.

Every error a client can cause is a 4xx JSON object (``{"error": ..., "status": ...}``),
never a traceback: ``ApiError`` carries the status, and an unexpected failure is
logged and answered 500 in the same shape. Message ids are opaque, but only ids of
the URL-safe alphabet are passed to the mail view at all, so ``..``, ``/`` (``%2F``)
and NUL never reach a store. State-changing requests need a JSON body or the DELETE
method, neither of which a cross-site form can send without a CORS preflight (that
this API never answers), so another web page cannot drive it.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import Request

from mailhost.mailview import IMailView, MessageQuery, NoSuchMessageId
from mailhost.web.events import EventStreams
from mailhost.web.interfaces import FaultError, IFaultControl, IQueueListing
from mailhost.web.mime import ParsedMessage, parse_later
from mailhost.web.openapi import description
from mailhost.web.shapes import attachment_json, fault_json, queued_json, summary_json

log = Logger()

_ID = re.compile(r"[A-Za-z0-9_=-][A-Za-z0-9._=-]{0,1023}")
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]|[0-9A-Fa-f:.]{2,45}")
_CID = re.compile(r"""(["'])cid:([^"'<>\s]{1,256})\1""", re.I)
_FILTERS = ("mailbox", "domain", "folder", "sender", "recipient", "subject", "body", "text")
MAX_BODY = 64 * 1024
DEFAULT_LIMIT = 50

#: CSP of the HTML body: no script, no network, styles and the message's own images
#: only (``cid:`` references point at its attachments).
HTML_CSP = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
            "font-src data:; form-action 'none'; frame-ancestors 'self'; base-uri 'none'")
#: CSP of downloads: never run as a page of this origin.
DOWNLOAD_CSP = "sandbox; default-src 'none'"


class ApiError(Exception):
    """An answer other than 200, with a message for the client."""

    def __init__(self, status: int, message: str, allow: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow


Handler = Callable[..., Coroutine[Any, Any, Any]]


class Api:
    """The ``/api/…`` routes over a mail view, a queue listing and a fault control."""

    def __init__(self, view: IMailView, events: EventStreams, reactor: Any,
                 queue: IQueueListing | None = None, faults: IFaultControl | None = None,
                 release_timeout: float = 60.0) -> None:
        self.view = view
        self.events = events
        self.reactor = reactor
        self.queue = queue
        self.faults = faults
        self.release_timeout = release_timeout
        # A few parsed messages: the page asks for a message, then its HTML and
        # attachments, and should not pay for the parse three times.
        self._parsed: OrderedDict[str, ParsedMessage] = OrderedDict()
        self._routes: list[tuple[tuple[str, ...], dict[bytes, Handler]]] = [
            (("openapi.json",), {b"GET": self.openapi}),
            (("mailboxes",), {b"GET": self.mailboxes}),
            (("messages",), {b"GET": self.list_messages, b"DELETE": self.purge}),
            (("messages", "*"), {b"GET": self.message, b"DELETE": self.delete}),
            (("messages", "*", "raw"), {b"GET": self.raw}),
            (("messages", "*", "html"), {b"GET": self.html}),
            (("messages", "*", "attachments"), {b"GET": self.attachments}),
            (("messages", "*", "attachments", "*"), {b"GET": self.attachment}),
            (("messages", "*", "release"), {b"POST": self.release}),
            (("queue",), {b"GET": self.list_queue}),
            (("faults",), {b"GET": self.list_faults, b"POST": self.add_fault,
                           b"DELETE": self.clear_faults}),
            (("events",), {b"GET": self.stream}),
        ]

    def route(self, method: bytes, segments: list[str]) -> tuple[Handler, list[str]]:
        """The handler and its ``*`` arguments; ``ApiError`` 404/405 otherwise."""
        for pattern, methods in self._routes:
            if len(pattern) != len(segments):
                continue
            args = []
            for want, got in zip(pattern, segments, strict=True):
                if want == "*":
                    args.append(got)
                elif want != got:
                    break
            else:
                handler = methods.get(b"GET" if method == b"HEAD" else method)
                if handler is None:
                    allow = ", ".join(m.decode() for m in methods)
                    raise ApiError(405, f"method not allowed; allowed: {allow}", allow=allow)
                return handler, args
        raise ApiError(404, "no such API path; see /api/openapi.json")

    # -- reading --------------------------------------------------------------------

    async def openapi(self, request: Request) -> Any:
        return description()

    async def mailboxes(self, request: Request) -> Any:
        return {"mailboxes": list(await self.view.mailboxes())}

    async def list_messages(self, request: Request) -> Any:
        query = _query(request)
        limit = _int_arg(request, "limit", DEFAULT_LIMIT, 1, 1000)
        offset = _int_arg(request, "offset", 0, 0, 10**9)
        found = await self.view.messages(query)
        page = found[offset:offset + limit]
        return {"total": len(found), "offset": offset, "limit": limit,
                "messages": [summary_json(s) for s in page]}

    async def message(self, request: Request, message_id: str) -> Any:
        message_id = _message_id(message_id)
        parsed = await self._parse(message_id)
        summary = await self._call(self.view.summary, message_id)
        return {
            "summary": summary_json(summary),
            "headers": [{"name": n, "value": v} for n, v in parsed.headers],
            "text": parsed.text, "html": parsed.html,
            "attachments": [attachment_json(message_id, a) for a in parsed.attachments],
        }

    async def raw(self, request: Request, message_id: str) -> bytes:
        message_id = _message_id(message_id)
        data = await self._call(self.view.raw, message_id)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-security-policy", DOWNLOAD_CSP.encode())
        if _args(request).get("download") == "1":
            request.setHeader(b"content-disposition",
                              f'attachment; filename="{message_id}.eml"'.encode())
        return bytes(data)

    async def html(self, request: Request, message_id: str) -> bytes:
        message_id = _message_id(message_id)
        parsed = await self._parse(message_id)
        if parsed.html is None:
            raise ApiError(404, "this message has no HTML body")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", HTML_CSP.encode())
        request.setHeader(b"referrer-policy", b"no-referrer")
        by_cid = {a.content_id: a.index for a in parsed.attachments if a.content_id}

        def inline(match: re.Match[str]) -> str:
            index = by_cid.get(match.group(2))
            if index is None:
                return match.group(0)
            quote_char = match.group(1)
            return f"{quote_char}/api/messages/{message_id}/attachments/{index}{quote_char}"

        return _CID.sub(inline, parsed.html).encode("utf-8", "replace")

    async def attachments(self, request: Request, message_id: str) -> Any:
        message_id = _message_id(message_id)
        parsed = await self._parse(message_id)
        return {"attachments": [attachment_json(message_id, a) for a in parsed.attachments]}

    async def attachment(self, request: Request, message_id: str, index: str) -> bytes:
        message_id = _message_id(message_id)
        if not index.isdigit() or len(index) > 6:
            raise ApiError(400, "attachment index must be a number")
        parsed = await self._parse(message_id)
        n = int(index)
        if n >= len(parsed.attachments):
            raise ApiError(404, f"this message has {len(parsed.attachments)} attachment(s)")
        meta = parsed.attachments[n]
        name = meta.filename or f"attachment-{n}"
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-security-policy", DOWNLOAD_CSP.encode())
        request.setHeader(b"content-disposition",
                          f"attachment; filename*=UTF-8''{quote(name, safe='')}".encode())
        return parsed.payloads[n]

    async def list_queue(self, request: Request) -> Any:
        queued = self.queue.queued() if self.queue is not None else []
        return {"messages": [queued_json(m) for m in queued]}

    async def list_faults(self, request: Request) -> Any:
        faults = self.faults.faults() if self.faults is not None else []
        return {"enabled": self.faults is not None, "faults": [fault_json(f) for f in faults]}

    async def stream(self, request: Request) -> bytes | None:
        if request.method == b"HEAD":  # headers only: no stream to hold open
            request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
            return b""
        self.events.open(request)
        return None  # the stream stays open

    # -- changing -------------------------------------------------------------------

    async def delete(self, request: Request, message_id: str) -> Any:
        message_id = _message_id(message_id)
        await self._call(self.view.delete, message_id)
        self._parsed.pop(message_id, None)
        self.events.publish("deleted", {"ids": [message_id]})
        return {"deleted": 1}

    async def purge(self, request: Request) -> Any:
        query = _query(request)
        count = await self.view.purge(None if query == MessageQuery() else query)
        self._parsed.clear()
        self.events.publish("purged", {"deleted": count})
        return {"deleted": count}

    async def release(self, request: Request, message_id: str) -> Any:
        message_id = _message_id(message_id)
        body = _json_body(request, {"host", "port", "recipients", "sender"})
        host, port = body.get("host"), body.get("port")
        if not isinstance(host, str) or not _HOST.fullmatch(host):
            raise ApiError(400, "host must be a host name or an IP address")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ApiError(400, "port must be a number from 1 to 65535")
        recipients = body.get("recipients")
        if recipients is not None and (
                not isinstance(recipients, list) or not recipients
                or not all(isinstance(r, str) and _address(r) for r in recipients)):
            raise ApiError(400, "recipients must be a non-empty list of addresses")
        sender = body.get("sender")
        if sender is not None and (not isinstance(sender, str)
                                   or (sender and not _address(sender))):
            raise ApiError(400, "sender must be an address or empty")
        host = host.strip("[]")
        endpoint = f"tcp:host={host.replace(':', chr(92) + ':')}:port={port}"
        d = self._call(self.view.release, message_id, endpoint, recipients, sender)
        d.addTimeout(self.release_timeout, self.reactor)
        try:
            await d
        except (ApiError, defer.CancelledError):
            raise
        except defer.TimeoutError:
            raise ApiError(504, f"{host}:{port} did not answer in time") from None
        except Exception as e:
            raise ApiError(502, f"release to {host}:{port} failed: {e}") from None
        return {"released": f"{host}:{port}"}

    async def add_fault(self, request: Request) -> Any:
        faults = self._fault_control()
        body = _json_body(request, {"protocol", "action", "command", "code", "message",
                                    "match", "times", "seconds"})
        for key in ("protocol", "action", "command"):
            if not isinstance(body.get(key), str):
                raise ApiError(400, f"{key} must be a string")
        checks: dict[str, Callable[[Any], bool]] = {
            "code": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
            "message": lambda v: v is None or isinstance(v, str),
            "match": lambda v: v is None or isinstance(v, str),
            "times": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
            "seconds": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        }
        for key, ok in checks.items():
            if key in body and not ok(body[key]):
                raise ApiError(400, f"{key} has the wrong type")
        try:
            fault = faults.add(body["protocol"], body["action"], body["command"],
                               code=body.get("code"), message=body.get("message"),
                               match=body.get("match"), times=body.get("times", 1),
                               seconds=float(body.get("seconds", 0.0)))
        except FaultError as e:
            raise ApiError(400, str(e)) from None
        request.setResponseCode(201)
        return fault_json(fault)

    async def clear_faults(self, request: Request) -> Any:
        return {"cleared": self._fault_control().clear()}

    # -- helpers --------------------------------------------------------------------

    def _fault_control(self) -> IFaultControl:
        if self.faults is None:
            raise ApiError(403, "faults are off on this server (set web.faults = true)")
        return self.faults

    def _call(self, method: Callable[..., Any], *args: Any) -> defer.Deferred:
        """A mail view call, its ``NoSuchMessageId`` turned into a 404."""
        d = defer.maybeDeferred(method, *args)

        def missing(failure: Any) -> Any:
            failure.trap(NoSuchMessageId)
            raise ApiError(404, "no such message")

        return d.addErrback(missing)

    async def _parse(self, message_id: str) -> ParsedMessage:
        cached = self._parsed.get(message_id)
        if cached is not None:
            # Still there? (IMAP, POP3 or another page may have deleted it.)
            await self._call(self.view.summary, message_id)
            self._parsed.move_to_end(message_id)
            return cached
        raw = await self._call(self.view.raw, message_id)
        parsed = await parse_later(bytes(raw), self.reactor)
        self._parsed[message_id] = parsed
        while len(self._parsed) > 16:
            self._parsed.popitem(last=False)
        return parsed


def _args(request: Request) -> dict[str, str]:
    """Query arguments (the last of repeated ones), as text."""
    out: dict[str, str] = {}
    given: dict[bytes, list[bytes]] = request.args or {}
    for key, values in given.items():
        try:
            out[key.decode()] = values[-1].decode()
        except UnicodeDecodeError:
            raise ApiError(400, "query arguments must be UTF-8") from None
    return out


def _int_arg(request: Request, name: str, default: int, low: int, high: int) -> int:
    value = _args(request).get(name)
    if value is None or value == "":
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}")
    return int(value)


def _time_arg(args: dict[str, str], name: str) -> datetime | None:
    value = args.get(name)
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"{name} must be an ISO 8601 date or time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _query(request: Request) -> MessageQuery:
    args = _args(request)
    texts: dict[str, Any] = {name: args[name] for name in _FILTERS if args.get(name)}
    return MessageQuery(since=_time_arg(args, "since"), before=_time_arg(args, "before"),
                        **texts)


def _message_id(value: str) -> str:
    if not _ID.fullmatch(value) or ".." in value:
        raise ApiError(400, "not a message id")
    return value


def _address(value: str) -> bool:
    return 3 <= len(value) <= 320 and "@" in value and not any(
        c in value for c in "<>\r\n\0 ,")


def _json_body(request: Request, allowed: set[str]) -> dict[str, Any]:
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype != b"application/json":
        raise ApiError(415, "send a JSON body (Content-Type: application/json)")
    assert request.content is not None
    data = request.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise ApiError(413, "request body too large")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}")
    return body
