#!/usr/bin/env python3
"""Store append micro-benchmark: messages/s for 4 KiB commits into MaildirStore.

Runs, in one process on the real reactor: sequential commits (one at a time, as one
SMTP session would) and 20 concurrent commits (20 sessions), each with fsync on and
off, plus MemoryStore for reference. Every commit goes through the full path
(CRLF-normalising writes, tmp file, fdatasync, link into new/, uidlist append, group
commit of the directory fsync). Reports messages/s, process CPU ms per message (all
threads) and, for fsync runs, how many commits shared each directory-fsync round.

The "SMTP" rows commit as SMTP does (``want_uid=False``): the commit fires once the
file is durable and the open INBOX numbers the messages in batches afterwards; their
clock stops only once a refresh has seen every message numbered, and they report how
many messages shared each UID batch.

Usage: python3 bench/store_append.py [--count 2000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet import defer, task  # noqa: E402

from mailhost.store.interfaces import DeliveryTarget  # noqa: E402
from mailhost.store.maildir import MaildirStore  # noqa: E402
from mailhost.store.memory import MemoryStore  # noqa: E402

USER = "bench@example.test"


def message(n: int) -> bytes:
    head = b"From: a@example.test\nTo: bench@example.test\nSubject: %d\n\n" % n
    line = b"x" * 62 + b"\n"
    return head + line * ((4096 - len(head)) // len(line))


#: Whether this tree has SMTP's deliveries without a UID wait.
LATER = "want_uid" in getattr(DeliveryTarget, "__dataclass_fields__", {})


async def one(store, n: int, smtp: bool = False) -> None:
    w = store.new_message()
    data = message(n)
    for i in range(0, len(data), 1024):  # arrives in pieces, like DATA from a socket
        w.write(data[i:i + 1024])
    target = DeliveryTarget(USER, want_uid=False) if smtp else DeliveryTarget(USER)
    await w.commit([target])


async def run(store, count: int, concurrency: int, smtp: bool = False,
              ) -> tuple[float, float]:
    """(msg/s, process CPU ms per message)."""
    folder = await (await store.open_account(USER)).open_folder("INBOX")
    started, cpu0 = time.perf_counter(), time.process_time()
    done = 0

    async def worker(k: int) -> None:
        nonlocal done
        while done < count:
            done += 1
            await one(store, done, smtp)

    await defer.gatherResults([defer.Deferred.fromCoroutine(worker(k))
                               for k in range(concurrency)])
    if smtp:
        await folder.refresh()  # every message numbered and visible
    return (count / (time.perf_counter() - started),
            (time.process_time() - cpu0) / count * 1000)


async def main(reactor, args) -> None:
    reactor.suggestThreadPoolSize(10)
    workdir = args.workdir or tempfile.mkdtemp(prefix="store-bench-")
    print(f"{args.count} x 4 KiB commits, Maildir under {workdir}")
    modes = [("fsync", True, False), ("no fsync", False, False)]
    if LATER:
        modes.insert(1, ("fsync SMTP", True, True))
    for label, fsync, smtp in modes:
        for conc in (1, 20):
            root = os.path.join(workdir, f"{label.replace(' ', '')}-{conc}")
            store = MaildirStore(root, fsync=fsync)
            rate, cpu = await run(store, args.count, conc, smtp)
            folder = (await (await store.open_account(USER)).open_folder("INBOX"))
            assert len(folder.messages()) == args.count
            extra = ""
            if fsync:
                extra = f"  ({args.count / max(store._sync.rounds, 1):.1f} commits per fsync round"
                if smtp:
                    extra += f", {args.count / max(folder.batches, 1):.1f} per UID batch"
                extra += ")"
            print(f"Maildir {label:10s} concurrency {conc:2d}: {rate:8.0f} msg/s "
                  f"{cpu:5.2f} ms CPU/msg{extra}")
            await store.close()
            shutil.rmtree(root, ignore_errors=True)
    for conc in (1, 20):
        rate, cpu = await run(MemoryStore(), args.count, conc)
        print(f"Memory              concurrency {conc:2d}: {rate:8.0f} msg/s {cpu:5.2f} ms CPU/msg")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--workdir", default=None,
                        help="where to put the Maildirs (default: a temp dir; use the "
                             "production disk to measure its fsync)")
    args = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, args)))
