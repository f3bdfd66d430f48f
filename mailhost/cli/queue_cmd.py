"""``mailhost queue list|show|flush|retry|delete|export-legacy``: the outbound spool.

It works on the spool files directly, so it works whether or not the server runs.
A running server is told through a trigger file in the spool (``trigger/``), which
it checks every second: flush and retry act within about a second, and a delete
is not undone by the server rewriting an envelope it still holds in memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime

from mailhost.config import Config
from mailhost.outbound.envelope import PENDING, Envelope, valid_queue_id
from mailhost.outbound.spool import SpoolFiles


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("queue", help="inspect and act on the outbound queue")
    q = p.add_subparsers(dest="queue_command", required=True)
    ls = q.add_parser("list", help="list queued messages and their recipients")
    ls.add_argument("--json", action="store_true", help="one JSON envelope per line")
    ls.set_defaults(func=cmd_list)
    show = q.add_parser("show", help="show one message's envelope and headers")
    show.add_argument("id")
    show.set_defaults(func=cmd_show)
    flush = q.add_parser("flush", help="retry every pending recipient now")
    flush.set_defaults(func=cmd_flush)
    retry = q.add_parser("retry", help="retry one message's pending recipients now")
    retry.add_argument("id")
    retry.set_defaults(func=cmd_retry)
    delete = q.add_parser("delete", help="remove a message from the queue (no bounce)")
    delete.add_argument("id")
    delete.set_defaults(func=cmd_delete)
    legacy = q.add_parser(
        "export-legacy",
        help="rewrite the queue in the older two-file form before a downgrade (server stopped)",
    )
    legacy.set_defaults(func=cmd_export_legacy)


def _files(config: Config) -> SpoolFiles:
    if config.queue.backend == "postgresql":  # the shared queue; nodes hear via requests
        from mailhost.db.database import Database
        from mailhost.outbound.pg_queue import PgSpoolFiles

        db = Database(config.queue.dsn or config.store.dsn, max_size=1)
        db.start()  # the pool; its work runs here, blocking (``transact``)
        return PgSpoolFiles(config.data_path(config.outbound.queue_dir), db,
                            node="mailhost-queue-cli")
    return SpoolFiles(config.data_path(config.outbound.queue_dir), fsync=config.outbound.fsync)


def _when(ts: float) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _load(files: SpoolFiles) -> list[Envelope]:
    out = []
    for name, env in files.iter_sync():
        if isinstance(env, Envelope):
            out.append(env)
        else:
            print(f"mailhost: {name}: unreadable envelope", file=sys.stderr)
    return out


def _find(files: SpoolFiles, qid: str) -> Envelope | None:
    qid = qid.strip().upper()
    if not valid_queue_id(qid):
        print(f"mailhost: {qid}: not a queue id", file=sys.stderr)
        return None
    env = files.load_envelope_sync(qid)
    if env is None:
        print(f"mailhost: {qid}: no such message in the queue", file=sys.stderr)
    return env


def cmd_list(args: argparse.Namespace, config: Config) -> int:
    files = _files(config)
    envelopes = _load(files)
    if args.json:
        for env in envelopes:
            print(env.to_json().decode())
        return 0
    for env in envelopes:
        sender = env.sender or "<>"
        print(f"{env.id}  {env.size:>9}  {_when(env.arrival)}  {sender}")
        for r in env.recipients:
            line = f"    {r.address}  {r.status}"
            if r.status == PENDING:
                line += f"  attempts={r.attempts}  next={_when(r.next_attempt)}"
            if r.last_error:
                line += f"  ({r.last_error})"
            print(line)
    pending = sum(1 for e in envelopes for r in e.recipients if r.status == PENDING)
    print(f"-- {len(envelopes)} messages, {pending} pending recipients")
    return 0


def cmd_show(args: argparse.Namespace, config: Config) -> int:
    files = _files(config)
    env = _find(files, args.id)
    if env is None:
        return 1
    print(json.dumps(json.loads(env.to_json()), indent=2))
    try:
        headers = files.headers_sync(env)
    except OSError as e:
        print(f"mailhost: {env.id}: message file unreadable: {e.strerror}", file=sys.stderr)
        return 1
    print()
    sys.stdout.write(headers.decode("utf-8", "replace").replace("\r\n", "\n"))
    return 0


def _make_due(files: SpoolFiles, env: Envelope) -> int:
    """Pending recipients of ``env``, made due now; the envelope is rewritten only if
    one was not due yet (mail that never had a try is due already)."""
    now = time.time()
    n = 0
    changed = False
    for r in env.recipients:
        if r.status == PENDING:
            if r.next_attempt > now:
                r.next_attempt = now
                changed = True
            n += 1
    if changed:
        files.save_envelope_sync(env)
    return n


def cmd_flush(args: argparse.Namespace, config: Config) -> int:
    files = _files(config)
    envelopes = _load(files)
    n = sum(1 for env in envelopes if _make_due(files, env))
    files.add_trigger_sync("flush")
    print(f"{n} messages due now")
    return 0


def cmd_retry(args: argparse.Namespace, config: Config) -> int:
    files = _files(config)
    env = _find(files, args.id)
    if env is None:
        return 1
    if not _make_due(files, env):
        print(f"mailhost: {env.id}: no pending recipients", file=sys.stderr)
        return 1
    files.add_trigger_sync("retry", env.id)
    print(f"{env.id}: due now")
    return 0


def cmd_delete(args: argparse.Namespace, config: Config) -> int:
    files = _files(config)
    env = _find(files, args.id)
    if env is None:
        return 1
    files.remove_sync(env.id)
    files.add_trigger_sync("delete", env.id)
    print(f"{env.id}: deleted")
    return 0


def cmd_export_legacy(args: argparse.Namespace, config: Config) -> int:
    """Make the spool readable by versions before the one-file form (see
    ``SpoolFiles.export_legacy_sync``); they would delete one-file messages."""
    files = _files(config)
    converted, problems = files.export_legacy_sync()
    for p in problems:
        print(f"mailhost: {p}", file=sys.stderr)
    print(f"{converted} messages rewritten in the two-file form")
    return 1 if problems else 0
