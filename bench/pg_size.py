#!/usr/bin/env python3
"""PostgreSQL store: database size per 100,000 messages of 4 KiB, alone and with 5
copies of each (issue 19's "Measure").

Fills two fresh databases of a private cluster (``bench/bench_pg.py``) through the
store's own delivery path, the one SMTP uses: a ``PostgresStore`` in this process,
``new_message()``, ``write``, ``commit(targets)``, 20 deliveries in flight. Not over
SMTP: 100,000 SMTP transactions per fill add minutes and nothing to the size (the
bytes stored are the same: SMTP's delivery target calls exactly these). Each message
is distinct (its own Received: line, Message-ID and body text of random words, which
compresses as plain text does), 4096 octets with CRLF line ends, as an SMTP delivery
stores it.

- "1 copy": every message to one mailbox (the INBOX of one of 100 users, in turn).
- "5 copies": every message to 5 users at once (one commit with 5 targets, as SMTP
  with 5 RCPTs does): 5 message rows, one body (bodies are stored once per SHA-256).

Then ``VACUUM ANALYZE``, ``pg_database_size``, each table's size (heap, TOAST,
indexes), and bytes per message above the empty database's size.

    python3 bench/pg_size.py [--messages 100000] [--in-flight 20]

Measured (2026-12-05, ``--messages 20000``, scaled to 100,000; load 15-20, so the
fill rates say little): one copy each, 2,639 bytes per message, 252 MiB per 100,000
(body_chunks 2,126 bytes a message: pglz halves the text; messages 335 with indexes;
bodies 162); 5 copies each, 3,611 bytes per message, 722 per stored copy, 344 MiB per
100,000 messages (500,000 copies): the bodies once, the 5 message rows 1,305 bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from bench_pg import BenchCluster, database_sizes

SIZE = 4096
USERS = 100
#: Body text: words drawn at random (seeded by the message number) from this list, so
#: the bodies compress about as plain-text mail does (PostgreSQL compresses bytea
#: values over 2 KiB with pglz; a body of one repeated line would shrink to nothing).
WORDS = ("the of and to in is that for it as with was on be by this are from at or an "
         "which have not has but were all been their more can will one other also when "
         "meeting report budget server delivery message attached please regards thanks "
         "tomorrow schedule review project update customer invoice account password "
         "quarterly minutes agenda draft version release network storage database").split()


def message(i: int) -> bytes:
    """Message ``i``: 4096 octets, CRLF, unique, shaped as an SMTP delivery stores it."""
    head = (f"Return-Path: <sender{i % 997}@remote.test>\r\n"
            f"Received: from client.remote.test (client.remote.test [192.0.2.{i % 250 + 1}])\r\n"
            f"\tby mx.example.test (mailhost) with ESMTP id B{i:010d}\r\n"
            f"\tfor <user@example.test>; Sat, 05 Dec 2026 08:{i // 60 % 60:02d}:{i % 60:02d} +0000\r\n"
            f"From: Sender {i % 997} <sender{i % 997}@remote.test>\r\n"
            "To: user@example.test\r\n"
            f"Subject: size bench message {i}\r\n"
            f"Date: Sat, 05 Dec 2026 08:00:00 +0000\r\n"
            f"Message-ID: <size.{i}@remote.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n").encode()
    rand = random.Random(i)
    lines, have = [], len(head)
    while have < SIZE:
        line = " ".join(rand.choice(WORDS) for _ in range(rand.randint(8, 14))) + "\r\n"
        lines.append(line.encode())
        have += len(line)
    data = head + b"".join(lines)[:SIZE - len(head) - 2] + b"\r\n"
    assert len(data) == SIZE
    return data


async def fill(reactor: object, dsn: str, count: int, copies: int, in_flight: int) -> float:
    """Deliver ``count`` messages, each to ``copies`` users; the seconds it took."""
    from twisted.internet import defer

    from mailhost.store.interfaces import DeliveryTarget
    from mailhost.store.postgresql.store import PostgresStore

    store = PostgresStore(dsn, reactor=reactor)
    await store.start()
    sem = defer.DeferredSemaphore(in_flight)

    def deliver(i: int) -> defer.Deferred[object]:
        writer = store.new_message()
        writer.write(message(i))
        users = [f"user{(i + k) % USERS}@example.test" for k in range(copies)]
        return writer.commit([DeliveryTarget(u, want_uid=False) for u in users])

    t0 = time.monotonic()
    try:
        await defer.gatherResults([sem.run(deliver, i) for i in range(count)],
                                  consumeErrors=True)
    finally:
        took = time.monotonic() - t0
        await store.close()
    return took


def main() -> None:
    from twisted.internet import defer, task

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--in-flight", type=int, default=20)
    opts = ap.parse_args()
    cluster = BenchCluster(durable=False).start()  # the size does not depend on fsync
    out: dict = {"messages": opts.messages, "message_octets": SIZE}

    async def run(reactor: object) -> None:
        empty = database_sizes(cluster.database())["database_bytes"]
        out["empty_database_bytes"] = empty
        for copies in (1, 5):
            dsn = cluster.database()
            took = await fill(reactor, dsn, opts.messages, copies, opts.in_flight)
            sizes = database_sizes(dsn)
            grown = sizes["database_bytes"] - empty
            out[f"{copies}_copies"] = {
                "fill_s": round(took, 1), "deliveries_per_s": round(opts.messages / took),
                **sizes, "grown_bytes": grown,
                "bytes_per_message": round(grown / opts.messages),
                "bytes_per_stored_copy": round(grown / (opts.messages * copies)),
                "per_100k_messages_mib": round(grown / opts.messages * 100_000 / 2**20, 1)}
            print(f"{copies} copies: {grown / 2**20:.1f} MiB, {grown / opts.messages:.0f} "
                  f"bytes/message, filled in {took:.0f} s", file=sys.stderr)

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))
    finally:
        cluster.stop()
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
