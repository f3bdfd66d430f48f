"""What the queue knows about a message besides its bytes: the envelope, per-recipient
delivery state, and queue ids.

The JSON form of ``Envelope`` is the spool's on-disk record (see ``spool``): it is
embedded in a one-file message or written to ``env/ID``, and versions before the
one-file spool read it too (``SpoolFiles.export_legacy_sync``), so fields are only
ever added, with defaults.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"


@dataclass(slots=True)
class RecipientState:
    """Delivery state of one recipient, persisted in the envelope."""

    address: str
    notify: list[str] = field(default_factory=list)
    orcpt: str | None = None
    status: str = PENDING
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    # Enhanced status code of the last result (e.g. "4.4.1", "5.1.1").
    status_code: str = ""
    remote_mta: str = ""
    last_attempt: float = 0.0
    # A DSN for the final status has been generated (or was not wanted).
    dsn_done: bool = False
    # The remote accepted with DSN support, so it reports success itself.
    relayed: bool = False

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()


@dataclass(slots=True)
class Envelope:
    """Everything the queue knows about one message besides its bytes."""

    id: str
    sender: str
    recipients: list[RecipientState]
    arrival: float
    size: int = 0
    envid: str | None = None
    ret: str | None = None
    # A delay warning DSN was sent already.
    delay_warned: bool = False
    # Received: fields in the header block, counted while spooling (see ``hops``).
    hops: int = 0
    # Where the message starts in its file (after the embedded envelope, if any).
    offset: int = 0

    def to_json(self) -> bytes:
        # Field by field: dataclasses.asdict deep-copies, and this runs per message.
        raw = {f: getattr(self, f) for f in _ENVELOPE_FIELDS}
        raw["recipients"] = [{f: getattr(r, f) for f in _RECIPIENT_FIELDS} for r in self.recipients]
        return json.dumps(raw, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        """An envelope from ``to_json``; one of the older form (no ``offset``) gets
        offset -1, which ``SpoolFiles`` resolves from the message file."""
        raw: dict[str, Any] = json.loads(data)
        raw.setdefault("offset", -1)
        rcpts = []
        for r in raw.pop("recipients"):
            # A big queue repeats these strings: share one copy of each.
            r["address"], r["status"] = sys.intern(r["address"]), sys.intern(r["status"])
            rcpts.append(RecipientState(**r))
        raw["sender"] = sys.intern(raw["sender"])
        return cls(recipients=rcpts, **raw)

    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.status == PENDING]

    @property
    def finished(self) -> bool:
        return all(r.status != PENDING for r in self.recipients)


_ENVELOPE_FIELDS = tuple(f.name for f in fields(Envelope) if f.name != "recipients")
_RECIPIENT_FIELDS = tuple(f.name for f in fields(RecipientState))


def new_queue_id(now: float | None = None) -> str:
    """Sortable by arrival (hex milliseconds) and unique (random suffix)."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:011X}{secrets.token_hex(4).upper()}"


def valid_queue_id(qid: str) -> bool:
    """A name the spool may have made (``new_queue_id``), so one safe as a file name."""
    return 8 <= len(qid) <= 64 and all(c in "0123456789ABCDEF" for c in qid)
