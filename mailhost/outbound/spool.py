"""The durable outbound spool: one file per queued message, its first envelope inside.

Layout under the queue directory::

    tmp/        message and envelope files being written
    msg/ID      the message (CRLF line ends, not dot-stuffed), see below
    env/ID      the envelope (JSON, see ``envelope.Envelope``) once it changed after queueing
    trigger/    requests from ``mailhost queue`` to a running server
    free/       emptied files of delivered messages, reused for new ones

A message kept in memory until commit (up to ``spool_writer.MEMORY_LIMIT``, nearly
all mail) is queued as one file: ``MAGIC``, the envelope as one JSON line, then the
message from ``Envelope.offset`` on. It is written in ``tmp/``, fsynced, renamed into
``msg/``, and ``msg/`` is fsynced: one file and two fsyncs per message, where a separate
envelope file cost a second file, fsync and rename. Later states (attempts, errors)
go to ``env/ID``, which overrides the embedded envelope.

A larger message was streamed to ``tmp/`` already, so it keeps the older two-file
form: ``msg/ID`` is the bare message (offset 0) and ``env/ID`` is written and synced
with it; spools from before the one-file form look the same and load unchanged. So
does a message whose envelope line would exceed ``MAX_ENVELOPE`` (the reader's bound),
or it would be acknowledged and then unreadable. In that form a message file without
an envelope is a commit that never finished (never acknowledged) and is removed when
the spool is loaded. Removal takes ``msg/ID`` away first, so a crash leaves at most an
envelope without message, which loading drops. A commit that fails after its rename
(an envelope write or directory fsync error) unlinks the message again: the client
gets a 4xx and retries, and a copy left behind would be delivered twice.

Files are recycled rather than unlinked and created: removal renames ``msg/ID`` into
``free/`` and empties it, and a commit claims a free file by renaming it to its own
``tmp/`` name before writing. On ext4 without a journal (common on VMs) creating an
inode skips every inode freed in the last 5 to 305 seconds, reading each one's inode
table block, so a spool that unlinks a file per relayed message makes every create on
the file system slower the longer it runs (at 300 msg/s, about a fifth of the relay's
CPU, and of the receiving Maildir's). ``free/`` holds at most ``FREE_FILES`` names.

Every blocking call runs in a thread; the reactor side batches them
(``spool_workers.SpoolBatches``) so concurrent commits share one thread hop and one
directory fsync. The public ``*_sync`` functions are for those threads and for the CLI.
Messages come in through ``spool_writer.SpoolWriter``.
"""

from __future__ import annotations

import errno
import io
import json
import os
import secrets
import shutil
import time
from collections import deque
from typing import Any, BinaryIO, cast

from twisted.internet import defer, threads
from twisted.logger import Logger

from mailhost.groupsync import GroupSync
from mailhost.outbound.envelope import Envelope, valid_queue_id
from mailhost.outbound.spool_workers import Op, SpoolBatches
from mailhost.store.reader import MessageReader

log = Logger()

#: The first bytes of a one-file message; a message file of the two-file form starts
#: with a header field (our own Received: line), never with a NUL.
MAGIC = b"\0MHQ1 "
#: Bound on the embedded envelope line, newline included (1000 recipients take about
#: 300 KiB); a longer envelope is written to ``env/ID`` instead (the two-file form).
MAX_ENVELOPE = 4 * 1024 * 1024
#: Emptied files kept in ``free/`` for reuse (beyond that, removal unlinks).
FREE_FILES = 1024


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MessageGone(FileNotFoundError):
    """A message file left the queue while open for reading (see ``MessageFile``)."""


class MessageFile(io.BufferedIOBase):
    """A queued message opened for reading, which notices being taken out of the queue.

    Removal renames ``msg/ID`` into ``free/`` and a later commit refills that inode,
    so a reader holding it open (a relay or local delivery of a message deleted
    meanwhile, one whose server replied before the end of DATA, a DSN) would go on
    with another message's bytes. After each read, ``msg/ID`` must still be this
    file: recycling renames it away before truncating or reusing it, so what was
    read before a passing check is this message's. Blocking (threads, or the
    bounded reads the relay client does on the reactor). Buffered: ``read(n)`` is short
    only at the end (``MessageReader`` then needs no extra read to find the end).
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()/__exit__
        st = os.fstat(self._f.fileno())
        self._ident = (st.st_dev, st.st_ino)

    def verify(self) -> None:
        """Raise ``MessageGone`` unless ``path`` still names the file opened."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._ident:
            raise MessageGone(errno.ENOENT, "message left the queue while being read", self.path)

    def read(self, size: int | None = -1) -> bytes:
        data = self._f.read(size)
        self.verify()
        return data

    def readline(self, size: int | None = -1) -> bytes:
        data = self._f.readline(size)
        self.verify()
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self._f.close()
        super().close()

    def __enter__(self) -> MessageFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SpoolFiles:
    """File operations on a spool directory.

    The ``*_sync`` methods block (thread or CLI use only). ``commit``, ``save_envelope``
    and ``remove`` are their reactor-side forms: they return Deferreds and run in
    batches (see ``run_batch``) on worker threads that report back through
    ``reactor`` (the global one if None).
    """

    def __init__(self, root: str, fsync: bool = True, reactor: Any = None) -> None:
        self.root = root
        self.fsync = fsync
        self.tmp_dir = os.path.join(root, "tmp")
        self.msg_dir = os.path.join(root, "msg")
        self.env_dir = os.path.join(root, "env")
        self.trigger_dir = os.path.join(root, "trigger")
        self.free_dir = os.path.join(root, "free")
        # Names in free/ this process may claim; deque ends are atomic across threads.
        self._free: deque[str] = deque()
        self._group = GroupSync()
        self._batches = SpoolBatches(self._sync_dirs, self._undo_op, reactor)

    @property
    def reactor(self) -> Any:
        """The reactor the spool threads report to (None: the global one, once used)."""
        return self._batches.reactor

    @property
    def batches(self) -> int:
        """Batches started so far (for tests and benchmarks)."""
        return self._batches.count

    def ensure_sync(self) -> None:
        for d in (self.tmp_dir, self.msg_dir, self.env_dir, self.trigger_dir, self.free_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)

    def message_path(self, qid: str) -> str:
        return os.path.join(self.msg_dir, qid)

    def envelope_path(self, qid: str) -> str:
        return os.path.join(self.env_dir, qid)

    # Reactor side: batched thread hops.

    def commit(self, tmp_path: str, envelope: Envelope, data: bytes | None) -> defer.Deferred:
        """``commit_sync`` in a batch; fires once the message is durable."""
        return self.run_batch(self._commit_op, tmp_path, envelope, data)

    def save_envelope(self, envelope: Envelope) -> defer.Deferred:
        """``save_envelope_sync`` in a batch.

        Serialised here, on the reactor thread that changes envelopes: in the worker
        it could catch a recipient half-recorded (delivered, not yet ``relayed``).
        """
        return self.run_batch(self._save_op, envelope.id, envelope.to_json())

    def remove(self, qid: str) -> defer.Deferred:
        """``remove_sync`` in a batch."""
        return self.run_batch(self._remove_op, qid)

    def run_batch(self, op: Op, *args: Any) -> defer.Deferred:
        """Run ``op(*args)`` in a thread, together with the operations asked for meanwhile
        (see ``SpoolBatches``). ``op`` returns ``(result, directories to fsync)``."""
        return self._batches.run(op, *args)

    def drain(self) -> defer.Deferred:
        """Fires once no batch runs or waits, so stopping loses no spool operation
        to the interpreter exit (the worker threads are daemons)."""
        return self._batches.drain()

    def _sync_dirs(self, dirs: set[str]) -> None:
        """A batch's directory fsyncs (thread side): one per directory for all of it."""
        if self.fsync:
            self._group.sync(dirs)

    def _undo_op(self, op: Op, args: tuple[Any, ...]) -> None:
        """A batch's directory fsync failed: a commit in it must not stay (thread side)."""
        if op == self._commit_op:
            self._undo_commit(args[1].id)

    # Thread side.

    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = os.path.join(self.tmp_dir, f"{os.path.basename(path)}.{secrets.token_hex(4)}.env")
        with open(tmp, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)

    def commit_sync(self, tmp_path: str, envelope: Envelope, data: bytes | None = None) -> None:
        """Make a message durable: the one-file form when its bytes are in ``data``,
        else (the message was streamed to ``tmp_path``) message file plus envelope.

        In the two-file form both files are fsynced before either is renamed into
        place; a crash before the directory fsyncs finish can leave an envelope
        without its message, which ``load_all_sync`` drops: it was never acknowledged.
        """
        _, dirs = self._commit_op(tmp_path, envelope, data)
        if self.fsync:
            try:
                self._group.sync(dirs)
            except BaseException:
                self._undo_commit(envelope.id)
                raise

    def _commit_op(
        self, tmp_path: str, envelope: Envelope, data: bytes | None
    ) -> tuple[str, tuple[str, ...]]:
        # Serialised here, in the worker: nothing else has this envelope before the
        # commit fires, and the reactor is spared the per-message JSON.
        envelope.offset = 0
        raw = envelope.to_json()
        if data is not None:
            self._claim_free(tmp_path)
        if data is not None and len(raw) < MAX_ENVELOPE:  # the line fits the reader
            head = MAGIC + raw + b"\n"
            with open(tmp_path, "wb") as f:
                f.write(head)
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp_path, self.message_path(envelope.id))
            envelope.offset = len(head)
            return envelope.id, (self.msg_dir,)
        if data is not None:  # an envelope too big to embed: the two-file form
            with open(tmp_path, "wb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
        elif self.fsync:
            _fsync_file(tmp_path)
        os.replace(tmp_path, self.message_path(envelope.id))
        try:
            self._write_atomic(self.envelope_path(envelope.id), raw)
        except BaseException:
            self._undo_commit(envelope.id)
            raise
        return envelope.id, (self.msg_dir, self.env_dir)

    def _undo_commit(self, qid: str) -> None:
        """Best effort: take back a message renamed into place by a commit that then
        failed. Its client gets a 4xx and sends it again; left here, it would go out
        twice after a restart."""
        try:
            self._remove_op(qid)
        except OSError as e:
            log.warn("outbound spool: {qid} not taken back after a failed commit: {e}",
                     qid=qid, e=e)

    def save_envelope_sync(self, envelope: Envelope) -> None:
        """Replace an envelope atomically (a crash leaves the old or the new state)."""
        _, dirs = self._save_op(envelope.id, envelope.to_json())
        if self.fsync and dirs:
            self._group.sync(dirs)

    def _save_op(self, qid: str, raw: bytes) -> tuple[None, tuple[str, ...]]:
        path = self.envelope_path(qid)
        # A replaced entry needs no directory fsync; the first env/ID of a one-file
        # message does, or a crash could bring back its state at queueing time.
        new = not os.path.exists(path)
        self._write_atomic(path, raw)
        return None, (self.env_dir,) if new else ()

    def remove_sync(self, qid: str) -> None:
        """Message first: an envelope left without it is dropped when loading."""
        self._remove_op(qid)

    def _remove_op(self, qid: str) -> tuple[None, tuple[str, ...]]:
        self._recycle(qid)
        try:
            os.unlink(self.envelope_path(qid))
        except FileNotFoundError:
            pass
        return None, ()

    def _claim_free(self, tmp_path: str) -> None:
        """Rename a free file to ``tmp_path`` (opening it then truncates, no new inode).
        The rename is the claim: another process or thread that took the same name
        gets ENOENT and tries the next one; with none left the open creates a file.
        A file with another link is never taken (see below)."""
        while True:
            try:
                name = self._free.pop()
            except IndexError:
                return
            try:
                os.rename(os.path.join(self.free_dir, name), tmp_path)
                if os.stat(tmp_path).st_nlink == 1:
                    return
            except FileNotFoundError:
                continue
            # Linked elsewhere too: only free/ and tmp/ are never fsynced, so after a
            # power cut (no journal) free/X can name the inode of a message acknowledged
            # since. Opening it "wb" would empty that message: drop our link instead.
            os.unlink(tmp_path)

    def _recycle(self, qid: str) -> None:
        """Take ``msg/ID`` out of the queue: into ``free/`` (then emptied), or unlinked
        when ``free/`` is full. The rename comes first, so the message leaves the
        queue whole or not at all."""
        path = self.message_path(qid)
        if len(self._free) >= FREE_FILES:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        free = os.path.join(self.free_dir, qid)
        try:
            os.rename(path, free)
        except OSError:  # free/ missing (a queue an older version made) or unusable
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        try:
            os.truncate(free, 0)  # no old mail lingers, and the disk space is freed
        except OSError:
            pass
        self._free.append(qid)

    def load_envelope_sync(self, qid: str) -> Envelope | None:
        """The envelope of ``qid``: ``env/ID`` if there is one, else the one embedded
        in its message file; None if it is not queued."""
        try:
            return self._env_file_sync(qid)
        except FileNotFoundError:
            return self._embedded_sync(qid)

    def _env_file_sync(self, qid: str) -> Envelope:
        """``env/ID``; if it is of the older form (no offset), the offset is read from
        the message file, so a spool half-converted by ``export_legacy_sync`` loads."""
        with open(self.envelope_path(qid), "rb") as f:
            env = Envelope.from_json(f.read())
        if env.offset < 0:
            try:
                with open(self.message_path(qid), "rb") as f:
                    env.offset = self._head_length(f)
            except FileNotFoundError:
                env.offset = 0
        return env

    @staticmethod
    def _head_length(f: Any) -> int:
        """Where the message starts in an open message file (0: the two-file form)."""
        if f.read(len(MAGIC)) != MAGIC:
            return 0
        line = f.readline(MAX_ENVELOPE)
        if not line.endswith(b"\n"):
            raise ValueError("unterminated embedded envelope")
        return len(MAGIC) + len(line)

    def _embedded_sync(self, qid: str) -> Envelope | None:
        try:
            f = open(self.message_path(qid), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return None
        with f:
            if f.read(len(MAGIC)) != MAGIC:
                return None  # a bare message: the two-file form
            line = f.readline(MAX_ENVELOPE)
        if not line.endswith(b"\n"):
            raise ValueError("unterminated embedded envelope")
        env = Envelope.from_json(line)
        env.offset = len(MAGIC) + len(line)
        return env

    def headers_sync(self, env: Envelope, limit: int = 256 * 1024) -> bytes:
        """The header block of a queued message, CRLF ends (for ``mailhost queue show``)."""
        return read_headers(self.message_path(env.id), limit, offset=env.offset)

    def iter_sync(self) -> list[tuple[str, Envelope | Exception]]:
        """Every queued message's id and envelope (or why it is unreadable), sorted by
        id, without cleaning anything up (for the CLI and tests)."""
        try:
            names = sorted(n for n in os.listdir(self.msg_dir) if valid_queue_id(n))
        except FileNotFoundError:
            return []
        out: list[tuple[str, Envelope | Exception]] = []
        for name in names:
            try:
                env = self.load_envelope_sync(name)
            except (ValueError, TypeError, KeyError) as e:
                out.append((name, e))
                continue
            if env is not None:
                out.append((name, env))
        return out

    def load_all_sync(self) -> tuple[list[Envelope], list[str]]:
        """Every queued envelope, sorted by id, and the ids of problems cleaned up."""
        self.ensure_sync()
        envelopes: list[Envelope] = []
        problems: list[str] = []
        env_names = set(os.listdir(self.env_dir))
        msg_names = set(os.listdir(self.msg_dir))
        young = time.time() - 600
        for name in sorted(msg_names):
            path = self.message_path(name)
            env = None
            if valid_queue_id(name):
                try:
                    if name in env_names:
                        env = self._env_file_sync(name)
                    else:
                        env = self._embedded_sync(name)
                except FileNotFoundError:
                    continue  # removed meanwhile
                except (ValueError, TypeError, KeyError) as e:
                    problems.append(f"{name}: unreadable envelope ({e}), left in place")
                    continue
            if env is not None:
                envelopes.append(env)
                continue
            try:
                # A two-file commit may be between its renames right now (a message
                # arriving while the spool loads): only an old one is unfinished.
                if valid_queue_id(name) and os.stat(path).st_mtime > young:
                    continue
                os.unlink(path)
            except FileNotFoundError:
                continue
            problems.append(f"{name}: message without envelope (unfinished commit), removed")
        for name in sorted(env_names - msg_names):
            if valid_queue_id(name):
                problems.append(f"{name}: envelope without message, removed")
                try:
                    os.unlink(self.envelope_path(name))
                except FileNotFoundError:
                    pass
        self._adopt_free()
        cutoff = time.time() - 3600
        for name in os.listdir(self.tmp_dir):
            path = os.path.join(self.tmp_dir, name)
            try:
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)
            except FileNotFoundError:
                pass
        return envelopes, problems

    def _adopt_free(self) -> None:
        """Reuse the free files a previous run left; unlink any beyond ``FREE_FILES``."""
        self._free.clear()
        for name in os.listdir(self.free_dir):
            if len(self._free) < FREE_FILES:
                self._free.append(name)
                continue
            try:
                os.unlink(os.path.join(self.free_dir, name))
            except FileNotFoundError:
                pass

    def export_legacy_sync(self) -> tuple[int, list[str]]:
        """Rewrite the spool in the two-file form of versions before the one-file spool
        (for a downgrade; the server must be stopped). Returns how many messages were
        rewritten and the problems met.

        Those versions delete a message file without ``env/ID`` (an unfinished commit
        to them) and refuse an envelope with an ``offset``. Per message: a bare copy is
        written and synced in ``tmp/``, then ``env/ID`` without offset, then the copy
        replaces ``msg/ID``. A crash in between leaves a spool this version still
        reads; running the export again finishes it.
        """
        self.ensure_sync()
        converted = 0
        problems: list[str] = []
        names = sorted(n for n in os.listdir(self.msg_dir) if valid_queue_id(n))
        for name in names:
            path = self.message_path(name)
            try:
                with open(path, "rb") as f:
                    head = self._head_length(f)
                    env = self.load_envelope_sync(name)
                    if env is None:
                        problems.append(f"{name}: message without envelope, left alone")
                        continue
                    raw = json.loads(env.to_json())
                    del raw["offset"]
                    legacy = json.dumps(raw, separators=(",", ":")).encode()
                    if head:
                        tmp = os.path.join(self.tmp_dir, f"{name}.legacy")
                        f.seek(head)
                        with open(tmp, "wb") as out:
                            shutil.copyfileobj(f, out, 1024 * 1024)
                            if self.fsync:
                                out.flush()
                                os.fsync(out.fileno())
            except FileNotFoundError:
                continue
            except (ValueError, TypeError, KeyError) as e:
                problems.append(f"{name}: unreadable envelope ({e}), left alone")
                continue
            try:
                with open(self.envelope_path(name), "rb") as ef:
                    current = ef.read()
            except FileNotFoundError:
                current = b""
            if current != legacy:
                self._write_atomic(self.envelope_path(name), legacy)
            if head:
                os.replace(tmp, path)
            if head or current != legacy:
                converted += 1
        if self.fsync:
            self._group.sync((self.msg_dir, self.env_dir))
        return converted, problems

    # Requests from the CLI to a running server.

    def add_trigger_sync(self, action: str, qid: str | None = None) -> None:
        self.ensure_sync()
        name = f"{time.time():.6f}-{secrets.token_hex(3)}"
        self._write_atomic(
            os.path.join(self.trigger_dir, name),
            json.dumps({"action": action, "id": qid}).encode(),
        )

    def take_triggers_sync(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
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



def read_headers(path: str, limit: int = 256 * 1024, offset: int = 0) -> bytes:
    """The header block of the message at ``offset`` in a file, CRLF ends, at most
    ``limit`` octets (blocking: call in a thread)."""
    with MessageFile(path) as f:
        f.seek(offset)
        return header_block(f, limit)


def header_block(f: Any, limit: int = 256 * 1024) -> bytes:
    """The header block read from ``f``'s position, CRLF ends, at most ``limit`` octets
    (blocking: a ``MessageReader.call``)."""
    out = bytearray()
    while len(out) < limit:
        line = f.readline(8192)
        if not line or line in (b"\r\n", b"\n"):
            break
        if not line.endswith(b"\n"):
            line += b"\r\n"
        out += line
    return bytes(out)


def message_reader(path: str, offset: int, size_hint: int | None = None) -> MessageReader:
    """The queued message in ``path`` from ``offset`` (past the embedded envelope) to
    the end, as the store's one message reader: bounded chunks, off the reactor by
    its policy, a small message in one read. Opens the file here: a read-only open
    is a path lookup, cheap enough for the reactor (as in the store's open_message).
    Raises OSError if the message is gone."""
    # A BufferedIOBase is a binary file, but not nominally a typing.BinaryIO.
    return MessageReader(cast(BinaryIO, MessageFile(path)), None, offset=offset,
                         size_hint=size_hint)


async def open_message_reader(path: str, offset: int,
                              size_hint: int | None = None) -> MessageReader:
    """``message_reader`` with the open in a thread (for callers off the hot path)."""
    f = await threads.deferToThread(MessageFile, path)
    return MessageReader(cast(BinaryIO, f), None, offset=offset, size_hint=size_hint)
