"""JSON shapes of the REST API (see ``openapi.py`` for their schemas)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mailhost.mailview import MessageSummary
from mailhost.web.interfaces import QueuedMessage
from mailhost.web.mime import Attachment


def iso(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def summary_json(s: MessageSummary) -> dict[str, Any]:
    return {
        "id": s.id, "mailbox": s.mailbox, "folder": s.folder, "uid": s.uid, "size": s.size,
        "received": iso(s.received), "sender": s.sender, "from": s.from_, "to": list(s.to),
        "subject": s.subject, "flags": sorted(s.flags),
    }


def attachment_json(message_id: str, a: Attachment) -> dict[str, Any]:
    return {"index": a.index, "filename": a.filename, "content_type": a.content_type,
            "size": a.size, "content_id": a.content_id, "inline": a.inline,
            "url": f"/api/messages/{message_id}/attachments/{a.index}"}


def queued_json(m: QueuedMessage) -> dict[str, Any]:
    return {
        "id": m.id, "sender": m.sender, "arrival": iso(m.arrival), "size": m.size,
        "recipients": [{"address": r.address, "status": r.status, "attempts": r.attempts,
                        "last_error": r.last_error,
                        "next_attempt": iso(r.next_attempt) if r.next_attempt else None}
                       for r in m.recipients],
    }


def fault_json(f: Any) -> dict[str, Any]:
    return {"protocol": f.protocol, "action": f.action, "command": f.command, "code": f.code,
            "message": f.message, "match": f.match, "times": f.times,
            "seconds": f.seconds, "hits": f.hits, "description": f.describe()}
