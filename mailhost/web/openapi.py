"""The REST API's OpenAPI 3.1 description, served at ``/api/openapi.json``.

Written by hand next to the handlers (``api.py``) and checked against them by
``tests/web/test_openapi.py``, which calls every path and validates each answer
against the schema given here. A client in any language can generate its bindings
from it.
"""

from __future__ import annotations

from typing import Any

_ID = {"name": "id", "in": "path", "required": True,
       "description": "An opaque message id from a list.",
       "schema": {"type": "string", "pattern": "^[A-Za-z0-9_=-][A-Za-z0-9._=-]{0,1023}$"}}

_FILTERS = [
    {"name": name, "in": "query", "required": False, "description": text,
     "schema": schema}
    for name, text, schema in (
        ("mailbox", "Exact account address.", {"type": "string"}),
        ("domain", "Every mailbox of this domain.", {"type": "string"}),
        ("folder", "Store folder name (INBOX).", {"type": "string"}),
        ("sender", "Substring of the envelope sender or From:.", {"type": "string"}),
        ("recipient", "Substring of the mailbox, To: or Cc:.", {"type": "string"}),
        ("subject", "Substring of the subject.", {"type": "string"}),
        ("body", "Substring of the decoded text parts.", {"type": "string"}),
        ("text", "Substring of any of the above.", {"type": "string"}),
        ("since", "Received at or after (ISO 8601).", {"type": "string", "format": "date-time"}),
        ("before", "Received before (ISO 8601).", {"type": "string", "format": "date-time"}),
    )
]

_PAGING = [
    {"name": "limit", "in": "query", "required": False, "description": "Page size.",
     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}},
    {"name": "offset", "in": "query", "required": False, "description": "Messages to skip.",
     "schema": {"type": "integer", "minimum": 0, "default": 0}},
]


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _error(description: str) -> dict[str, Any]:
    return _json("Error", description)


_ERRORS = {"400": _error("Malformed request."), "404": _error("No such message.")}

_NULLABLE_STR = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error", "status"], "additionalProperties": False,
        "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
    },
    "Mailboxes": {
        "type": "object", "required": ["mailboxes"], "additionalProperties": False,
        "properties": {"mailboxes": {"type": "array", "items": {"type": "string"}}},
    },
    "MessageSummary": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "mailbox", "folder", "uid", "size", "received", "sender", "from",
                     "to", "subject", "flags"],
        "properties": {
            "id": {"type": "string"}, "mailbox": {"type": "string"},
            "folder": {"type": "string"}, "uid": {"type": "integer"},
            "size": {"type": "integer"}, "received": _TIME, "sender": _NULLABLE_STR,
            "from": _NULLABLE_STR, "to": {"type": "array", "items": {"type": "string"}},
            "subject": _NULLABLE_STR, "flags": {"type": "array", "items": {"type": "string"}},
        },
    },
    "MessageList": {
        "type": "object", "required": ["total", "offset", "limit", "messages"],
        "additionalProperties": False,
        "properties": {
            "total": {"type": "integer"}, "offset": {"type": "integer"},
            "limit": {"type": "integer"},
            "messages": {"type": "array", "items": {"$ref": "#/components/schemas/MessageSummary"}},
        },
    },
    "Attachment": {
        "type": "object", "additionalProperties": False,
        "required": ["index", "filename", "content_type", "size", "content_id", "inline", "url"],
        "properties": {
            "index": {"type": "integer"}, "filename": _NULLABLE_STR,
            "content_type": {"type": "string"}, "size": {"type": "integer"},
            "content_id": _NULLABLE_STR, "inline": {"type": "boolean"},
            "url": {"type": "string"},
        },
    },
    "Attachments": {
        "type": "object", "required": ["attachments"], "additionalProperties": False,
        "properties": {"attachments": {"type": "array",
                                       "items": {"$ref": "#/components/schemas/Attachment"}}},
    },
    "Message": {
        "type": "object", "additionalProperties": False,
        "required": ["summary", "headers", "text", "html", "attachments"],
        "properties": {
            "summary": {"$ref": "#/components/schemas/MessageSummary"},
            "headers": {"type": "array", "items": {
                "type": "object", "required": ["name", "value"], "additionalProperties": False,
                "properties": {"name": {"type": "string"}, "value": {"type": "string"}}}},
            "text": _NULLABLE_STR,
            "html": _NULLABLE_STR,
            "attachments": {"type": "array", "items": {"$ref": "#/components/schemas/Attachment"}},
        },
    },
    "Deleted": {
        "type": "object", "required": ["deleted"], "additionalProperties": False,
        "properties": {"deleted": {"type": "integer", "minimum": 0}},
    },
    "ReleaseRequest": {
        "type": "object", "required": ["host", "port"], "additionalProperties": False,
        "properties": {
            "host": {"type": "string", "description": "SMTP server host name or address."},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "recipients": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                           "description": "Default: the message's mailbox."},
            "sender": {"type": "string", "description": "Default: its envelope sender."},
        },
    },
    "Released": {
        "type": "object", "required": ["released"], "additionalProperties": False,
        "properties": {"released": {"type": "string"}},
    },
    "QueuedMessage": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "sender", "recipients", "arrival", "size"],
        "properties": {
            "id": {"type": "string"}, "sender": {"type": "string"}, "arrival": _TIME,
            "size": {"type": "integer"},
            "recipients": {"type": "array", "items": {
                "type": "object", "additionalProperties": False,
                "required": ["address", "status", "attempts", "last_error", "next_attempt"],
                "properties": {
                    "address": {"type": "string"}, "status": {"type": "string"},
                    "attempts": {"type": "integer"}, "last_error": {"type": "string"},
                    "next_attempt": {"type": ["string", "null"], "format": "date-time"},
                }}},
        },
    },
    "Queue": {
        "type": "object", "required": ["messages"], "additionalProperties": False,
        "properties": {"messages": {"type": "array",
                                    "items": {"$ref": "#/components/schemas/QueuedMessage"}}},
    },
    "Fault": {
        "type": "object", "additionalProperties": False,
        "required": ["protocol", "action", "command", "code", "message", "match", "times",
                     "seconds", "hits", "description"],
        "properties": {
            "protocol": {"enum": ["smtp", "pop3", "imap"]},
            "action": {"enum": ["fail", "delay", "drop_after"]},
            "command": {"type": "string"}, "code": {"type": ["integer", "null"]},
            "message": {"type": "string"}, "match": _NULLABLE_STR,
            "times": {"type": ["integer", "null"]}, "seconds": {"type": "number"},
            "hits": {"type": "integer"}, "description": {"type": "string"},
        },
    },
    "FaultRequest": {
        "type": "object", "required": ["protocol", "action", "command"],
        "additionalProperties": False,
        "properties": {
            "protocol": {"enum": ["smtp", "pop3", "imap"]},
            "action": {"enum": ["fail", "delay", "drop_after"]},
            "command": {"type": "string", "description": "Verb (MAIL, RCPT, DATA, LOGIN…) or greeting."},
            "code": {"type": ["integer", "null"], "minimum": 400, "maximum": 599},
            "message": {"type": ["string", "null"]},
            "match": {"type": ["string", "null"]},
            "times": {"type": ["integer", "null"], "minimum": 1},
            "seconds": {"type": "number", "minimum": 0, "maximum": 3600},
        },
    },
    "Faults": {
        "type": "object", "required": ["enabled", "faults"], "additionalProperties": False,
        "properties": {"enabled": {"type": "boolean"},
                       "faults": {"type": "array", "items": {"$ref": "#/components/schemas/Fault"}}},
    },
    "Cleared": {
        "type": "object", "required": ["cleared"], "additionalProperties": False,
        "properties": {"cleared": {"type": "integer", "minimum": 0}},
    },
}


def _raw(media: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {media: {"schema": {"type": "string", "format": "binary"}}}}


PATHS: dict[str, Any] = {
    "/api/openapi.json": {"get": {
        "summary": "This description.", "operationId": "openapi",
        "responses": {"200": {"description": "OpenAPI 3.1",
                              "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    "/api/mailboxes": {"get": {
        "summary": "The accounts that exist, sorted.", "operationId": "listMailboxes",
        "responses": {"200": _json("Mailboxes", "Account addresses.")}}},
    "/api/messages": {
        "get": {"summary": "Messages matching the filters, newest first, one page.",
                "operationId": "listMessages", "parameters": _FILTERS + _PAGING,
                "responses": {"200": _json("MessageList", "One page."),
                              "400": _error("A bad filter.")}},
        "delete": {"summary": "Delete every message matching the filters (all without any).",
                   "operationId": "purgeMessages", "parameters": _FILTERS,
                   "responses": {"200": _json("Deleted", "How many."),
                                 "400": _error("A bad filter.")}},
    },
    "/api/messages/{id}": {
        "parameters": [_ID],
        "get": {"summary": "One message: summary, header fields, text and HTML bodies, attachments.",
                "operationId": "getMessage",
                "responses": {"200": _json("Message", "The message."), **_ERRORS}},
        "delete": {"summary": "Delete one message.", "operationId": "deleteMessage",
                   "responses": {"200": _json("Deleted", "Deleted (1)."), **_ERRORS}},
    },
    "/api/messages/{id}/raw": {
        "parameters": [_ID, {"name": "download", "in": "query", "required": False,
                             "schema": {"type": "integer", "enum": [0, 1]},
                             "description": "1: as an .eml attachment."}],
        "get": {"summary": "The message exactly as stored.", "operationId": "getRaw",
                "responses": {"200": _raw("text/plain", "The source (CRLF line ends)."),
                              **_ERRORS}},
    },
    "/api/messages/{id}/html": {
        "parameters": [_ID],
        "get": {"summary": "The HTML body, under a Content-Security-Policy that runs no script "
                           "and loads nothing from the network (show it in a sandboxed iframe).",
                "operationId": "getHTML",
                "responses": {"200": _raw("text/html", "The HTML body."),
                              "404": _error("No such message, or it has no HTML body."),
                              "400": _ERRORS["400"]}},
    },
    "/api/messages/{id}/attachments": {
        "parameters": [_ID],
        "get": {"summary": "The message's attachments.", "operationId": "listAttachments",
                "responses": {"200": _json("Attachments", "Attachments."), **_ERRORS}},
    },
    "/api/messages/{id}/attachments/{index}": {
        "parameters": [_ID, {"name": "index", "in": "path", "required": True,
                             "schema": {"type": "integer", "minimum": 0}}],
        "get": {"summary": "Download one attachment (decoded).", "operationId": "getAttachment",
                "responses": {"200": _raw("application/octet-stream", "Its bytes."),
                              **_ERRORS}},
    },
    "/api/messages/{id}/release": {
        "parameters": [_ID],
        "post": {"summary": "Send the message, byte for byte, to an SMTP server.",
                 "operationId": "releaseMessage",
                 "requestBody": {"required": True, "content": {"application/json": {
                     "schema": {"$ref": "#/components/schemas/ReleaseRequest"}}}},
                 "responses": {"200": _json("Released", "Accepted by the server."),
                               "415": _error("Not a JSON body."),
                               "502": _error("The SMTP server refused it or could not be reached."),
                               **_ERRORS}},
    },
    "/api/queue": {"get": {
        "summary": "The outbound queue, oldest first.", "operationId": "listQueue",
        "responses": {"200": _json("Queue", "Queued messages.")}}},
    "/api/faults": {
        "get": {"summary": "The scripted faults.", "operationId": "listFaults",
                "responses": {"200": _json("Faults", "Faults.")}},
        "post": {"summary": "Script a fault (SMTP, POP3 or IMAP).", "operationId": "addFault",
                 "requestBody": {"required": True, "content": {"application/json": {
                     "schema": {"$ref": "#/components/schemas/FaultRequest"}}}},
                 "responses": {"201": _json("Fault", "The fault added."),
                               "400": _error("A fault that cannot be scripted."),
                               "403": _error("Faults are off (web.faults)."),
                               "415": _error("Not a JSON body.")}},
        "delete": {"summary": "Remove every fault.", "operationId": "clearFaults",
                   "responses": {"200": _json("Cleared", "How many."),
                                 "403": _error("Faults are off (web.faults).")}},
    },
    "/api/events": {"get": {
        "summary": "Server-sent events: `message` (a MessageSummary) when mail is stored, "
                   "`deleted` ({\"ids\": [...]}) and `purged` ({\"deleted\": n}) when it goes.",
        "operationId": "events",
        "responses": {"200": {"description": "An event stream.",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}}}}},
}


def description(server_url: str | None = None) -> dict[str, Any]:
    """The whole OpenAPI document."""
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "mailhost web API", "version": "1",
                 "description": "Read, search, delete and release the mail a mailhost test or "
                                "development server stored; list its outbound queue; script "
                                "faults. Errors are JSON objects with `error` and `status`."},
        "paths": PATHS,
        "components": {"schemas": SCHEMAS},
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
