"""The durable outbound spool: one message file and one JSON envelope per queued message.

Layout under the queue directory::

    tmp/        message and envelope files being written
    msg/ID      the message (CRLF line ends, not dot-stuffed)
    env/ID      the envelope (JSON, see ``Envelope``)
    trigger/    requests from ``mailhost queue`` to a running server

A message is queued once its envelope exists: the message file is written and
fsynced first, then the envelope (tmp, fsync, rename, directory fsync). A message
file without an envelope is a commit that never finished (never acknowledged) and
is removed when the spool is loaded. Every blocking call runs in a thread; the
public ``*_sync`` functions are for those threads and for the CLI.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from twisted.internet import threads
from twisted.logger import Logger
from zope.interface import implementer

from mailhost.outbound.interfaces import IQueueWriter, QueueRecipient
from mailhost.store.crlf import CRLFNormalizer
from mailhost.store.groupsync import GroupSync

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"

log = Logger()


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
    # Received: headers counted while spooling (-1: unknown, read the file).
    hops: int = 0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        raw: dict[str, Any] = json.loads(data)
        rcpts = [RecipientState(**r) for r in raw.pop("recipients")]
        return cls(recipients=rcpts, **raw)

    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.status == PENDING]

    @property
    def finished(self) -> bool:
        return all(r.status != PENDING for r in self.recipients)


#: Messages up to this size stay in memory until commit (see SpoolWriter).
MEMORY_LIMIT = 256 * 1024


def new_queue_id(now: float | None = None) -> str:
    """Sortable by arrival (hex milliseconds) and unique (random suffix)."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:011X}{secrets.token_hex(4).upper()}"


def valid_queue_id(qid: str) -> bool:
    return 8 <= len(qid) <= 64 and all(c in "0123456789ABCDEF" for c in qid)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolFiles:
    """Blocking file operations on a spool directory (thread or CLI use only)."""

    def __init__(self, root: str, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self.tmp_dir = os.path.join(root, "tmp")
        self.msg_dir = os.path.join(root, "msg")
        self.env_dir = os.path.join(root, "env")
        self.trigger_dir = os.path.join(root, "trigger")
        self._group = GroupSync()

    def ensure_sync(self) -> None:
        for d in (self.tmp_dir, self.msg_dir, self.env_dir, self.trigger_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)

    def message_path(self, qid: str) -> str:
        return os.path.join(self.msg_dir, qid)

    def envelope_path(self, qid: str) -> str:
        return os.path.join(self.env_dir, qid)

    def _write_atomic(self, path: str, data: bytes, fsync_dir: bool) -> None:
        tmp = os.path.join(self.tmp_dir, f"{os.path.basename(path)}.{secrets.token_hex(4)}.env")
        with open(tmp, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.fsync and fsync_dir:
            _fsync_dir(os.path.dirname(path))

    def commit_sync(self, tmp_path: str, envelope: Envelope, data: bytes | None = None) -> None:
        """Make a fully written message file and its envelope durable.

        Both files are fsynced before either is renamed into place; the two directory
        fsyncs are shared with concurrent commits (group commit). A crash before they
        finish can leave an envelope without its message: ``load_all_sync`` drops it,
        and it was never acknowledged.
        """
        if data is not None:  # the message was kept in memory: write it here
            with open(tmp_path, "wb") as f:
                f.write(data)
        if self.fsync:
            fd = os.open(tmp_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp_path, self.message_path(envelope.id))
        self._write_atomic(self.envelope_path(envelope.id), envelope.to_json(), False)
        if self.fsync:
            self._group.sync([self.msg_dir, self.env_dir])

    def save_envelope_sync(self, envelope: Envelope) -> None:
        """Replace an envelope atomically. The directory fsync is skipped: the entry
        already exists, so a crash leaves either the old or the new state."""
        self._write_atomic(self.envelope_path(envelope.id), envelope.to_json(), False)

    def remove_sync(self, qid: str) -> None:
        """Envelope first: without it, a leftover message file is an orphan."""
        for path in (self.envelope_path(qid), self.message_path(qid)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def load_envelope_sync(self, qid: str) -> Envelope | None:
        try:
            with open(self.envelope_path(qid), "rb") as f:
                return Envelope.from_json(f.read())
        except FileNotFoundError:
            return None

    def load_all_sync(self) -> tuple[list[Envelope], list[str]]:
        """Every queued envelope, sorted by id, and the ids of problems cleaned up."""
        self.ensure_sync()
        envelopes: list[Envelope] = []
        problems: list[str] = []
        env_ids = set()
        for name in sorted(os.listdir(self.env_dir)):
            if not valid_queue_id(name):
                continue
            if not os.path.exists(self.message_path(name)):
                problems.append(f"{name}: envelope without message, removed")
                self.remove_sync(name)
                continue
            try:
                env = self.load_envelope_sync(name)
            except (ValueError, TypeError, KeyError) as e:
                problems.append(f"{name}: unreadable envelope ({e}), left in place")
                env_ids.add(name)
                continue
            if env is not None:
                envelopes.append(env)
                env_ids.add(name)
        for name in os.listdir(self.msg_dir):
            if name not in env_ids:
                problems.append(f"{name}: message without envelope (unfinished commit), removed")
                os.unlink(self.message_path(name))
        cutoff = time.time() - 3600
        for name in os.listdir(self.tmp_dir):
            path = os.path.join(self.tmp_dir, name)
            try:
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)
            except FileNotFoundError:
                pass
        return envelopes, problems

    # Requests from the CLI to a running server.

    def add_trigger_sync(self, action: str, qid: str | None = None) -> None:
        self.ensure_sync()
        name = f"{time.time():.6f}-{secrets.token_hex(3)}"
        self._write_atomic(
            os.path.join(self.trigger_dir, name),
            json.dumps({"action": action, "id": qid}).encode(),
            False,
        )

    def take_triggers_sync(self) -> list[dict[str, Any]]:
        out = []
        try:
            names = sorted(os.listdir(self.trigger_dir))
        except FileNotFoundError:
            return out
        for name in names:
            path = os.path.join(self.trigger_dir, name)
            try:
                with open(path, "rb") as f:
                    out.append(json.loads(f.read()))
            except (OSError, ValueError):
                pass
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return out

    def has_triggers_sync(self) -> bool:
        try:
            return bool(os.listdir(self.trigger_dir))
        except FileNotFoundError:
            return False


@implementer(IQueueWriter)
class SpoolWriter:
    """Streams one message into ``tmp/``; ``commit`` makes it durable in a thread.

    Implements: IQueueWriter. Bare LF is normalised to CRLF so the client can send
    the file as is (after dot-stuffing).
    """

    def __init__(
        self,
        files: SpoolFiles,
        sender: str,
        envid: str | None,
        ret: str | None,
        on_commit: Callable[[Envelope], None],
        clock_seconds: Callable[[], float],
    ) -> None:
        self._files = files
        self._sender = sender
        self._envid = envid
        self._ret = ret.upper() if ret else None
        self._on_commit = on_commit
        self._now = clock_seconds
        self.id = new_queue_id()
        self._path = os.path.join(files.tmp_dir, f"{self.id}.msg")
        # Like the store's writer: a small message stays in memory and the commit's
        # worker thread creates the file, so the reactor never waits on a file create.
        self._file: Any = None
        self._buffer: bytearray | None = bytearray()
        self._crlf = CRLFNormalizer()
        self.size = 0
        self._done = False
        self._in_headers = True
        self._line_head = b""  # the start of the current header line (bounded)
        self.hops = 0

    def write(self, data: bytes) -> None:
        if self._done:
            raise RuntimeError("write after commit/abort")
        data = self._crlf.feed(data)  # the store's normaliser: one CRLF rule everywhere
        if self._in_headers:
            self._count_hops(data)
        self.size += len(data)
        if self._buffer is None:
            self._file.write(data)
            return
        self._buffer += data
        if len(self._buffer) > MEMORY_LIMIT:  # large: stream the rest through a file
            self._file = open(self._path, "wb")  # noqa: SIM115 - lives until commit/abort
            self._file.write(self._buffer)
            self._buffer = None

    def _count_hops(self, data: bytes) -> None:
        """Count Received: lines of the header block as it streams past."""
        pos = 0
        while self._in_headers:
            nl = data.find(b"\n", pos)
            piece = data[pos:] if nl < 0 else data[pos:nl]
            if len(self._line_head) < 16:
                self._line_head += piece[: 16 - len(self._line_head)]
            if nl < 0:
                return
            line = self._line_head
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                self._in_headers = False
            elif line[:9].lower() == b"received:":
                self.hops += 1
            self._line_head = b""
            pos = nl + 1

    def _finish_headers(self) -> None:
        """An unterminated last header line counts too."""
        if self._in_headers and self._line_head.lower().startswith(b"received:"):
            self.hops += 1
        self._in_headers = False

    def commit(self, recipients: Sequence[QueueRecipient]) -> object:
        if self._done:
            raise RuntimeError("commit after commit/abort")
        self._done = True
        if self._file is not None:
            self._file.close()
        self._finish_headers()
        env = Envelope(
            id=self.id,
            sender=self._sender,
            recipients=[
                RecipientState(address=r.address, notify=sorted(r.notify), orcpt=r.orcpt)
                for r in recipients
            ],
            arrival=self._now(),
            size=self.size,
            envid=self._envid,
            ret=self._ret,
            hops=self.hops,
        )
        data = None if self._buffer is None else bytes(self._buffer)
        self._buffer = None
        d = threads.deferToThread(self._files.commit_sync, self._path, env, data)

        def committed(_: object) -> str:
            self._on_commit(env)
            return env.id

        def failed(f: Any) -> Any:
            try:
                os.unlink(self._path)
            except OSError:
                pass
            return f

        d.addCallbacks(committed, failed)
        return d

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer = None
        if self._file is None:
            return
        self._file.close()
        try:
            os.unlink(self._path)
        except OSError:
            pass


def read_headers(path: str, limit: int = 256 * 1024) -> bytes:
    """The header block of a message file, CRLF ends, at most ``limit`` octets
    (blocking: call in a thread)."""
    out = bytearray()
    with open(path, "rb") as f:
        while len(out) < limit:
            line = f.readline(8192)
            if not line or line in (b"\r\n", b"\n"):
                break
            if not line.endswith(b"\n"):
                line += b"\r\n"
            out += line
    return bytes(out)
