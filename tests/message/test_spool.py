"""``Spool``: small messages in memory, large ones through a temporary file."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor

from mailhost.message.spool import CHUNK, Spool


@pytest_twisted.ensureDeferred
async def test_small_message_stays_in_memory():
    spool = Spool(reactor, memory_limit=1000)
    spool.write(b"head\r\n\r\n")
    spool.write(b"body\r\n")
    out = []
    await spool.read(8, out.append)
    assert b"".join(out) == b"body\r\n"
    assert spool._file is None
    spool.close()


@pytest_twisted.ensureDeferred
async def test_large_message_goes_to_a_file_and_reads_back_in_chunks():
    spool = Spool(reactor, memory_limit=1000)
    data = bytes(range(256)) * 4096  # 1 MiB
    for i in range(0, len(data), 4000):
        spool.write(data[i:i + 4000])
    out = []
    await spool.read(10, out.append)
    assert b"".join(out) == data[10:]
    assert spool._file is not None
    assert max(len(c) for c in out) <= CHUNK
    spool.close()
    await spool._writing
    assert spool._file is None
