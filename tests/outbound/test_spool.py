"""Spool durability: writer, envelopes, orphan cleanup, and a writer killed with -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from mailhost.outbound.interfaces import IQueueWriter, QueueRecipient
from mailhost.outbound.spool import (
    MAGIC,
    MEMORY_LIMIT,
    Envelope,
    RecipientState,
    SpoolFiles,
    SpoolWriter,
    read_headers,
)


@pytest_twisted.ensureDeferred
async def test_writer_streams_normalises_and_commits(tmp_path):
    files = SpoolFiles(str(tmp_path / "q"), fsync=True)
    files.ensure_sync()
    committed = []
    w = SpoolWriter(files, "alice@example.test", "E1", "hdrs", committed.append, time.time)
    verifyObject(IQueueWriter, w)
    w.write(b"Subject: x\r")
    w.write(b"\nX: y\n\nline1\nline2\r\n")
    qid = await w.commit([QueueRecipient("bob@remote.example", frozenset({"FAILURE"}), "rfc822;bob@remote.example")])
    assert committed and committed[0].id == qid
    env = files.load_envelope_sync(qid)
    # One file: the envelope line, then the message.
    raw = open(files.message_path(qid), "rb").read()
    assert raw.startswith(MAGIC) and committed[0].offset == env.offset
    data = raw[env.offset:]
    assert data == b"Subject: x\r\nX: y\r\n\r\nline1\r\nline2\r\n"
    assert os.listdir(files.env_dir) == []
    assert read_headers(files.message_path(qid), offset=env.offset) == b"Subject: x\r\nX: y\r\n"
    assert env.sender == "alice@example.test" and env.envid == "E1" and env.ret == "HDRS"
    assert env.size == len(data)
    assert env.recipients[0].notify == ["FAILURE"] and env.recipients[0].status == "pending"
    assert os.listdir(files.tmp_dir) == []


def test_abort_leaves_nothing(tmp_path):
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    w = SpoolWriter(files, "", None, None, lambda e: None, time.time)
    w.write(b"x\r\n")
    w.abort()
    w.abort()
    assert os.listdir(files.tmp_dir) == []


def test_load_cleans_orphans(tmp_path):
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    open(files.message_path("0000000000A00000000"), "wb").write(b"orphan")
    os.utime(files.message_path("0000000000A00000000"), (1, 1))  # an old unfinished commit
    open(files.message_path("0000000000D00000000"), "wb").write(b"being committed")
    env = Envelope(id="0000000000B00000000", sender="", recipients=[], arrival=1.0)
    files.save_envelope_sync(env)  # envelope without message
    good = Envelope(id="0000000000C00000000", sender="a@b", recipients=[], arrival=2.0)
    open(files.message_path(good.id), "wb").write(b"Received: x\r\nReceived: y\r\n\r\nbody")
    files.save_envelope_sync(good)
    envelopes, problems = files.load_all_sync()
    assert [e.id for e in envelopes] == [good.id]
    assert len(problems) == 2
    # A young bare message may be a two-file commit between its renames: left alone.
    assert sorted(os.listdir(files.msg_dir)) == [good.id, "0000000000D00000000"]
    assert read_headers(files.message_path(good.id)) == b"Received: x\r\nReceived: y\r\n"


WRITER = textwrap.dedent("""
    import sys, time
    from mailhost.outbound.spool import Envelope, RecipientState, SpoolFiles, new_queue_id
    files = SpoolFiles(sys.argv[1], fsync=True)
    files.ensure_sync()
    body = b"Subject: t\\r\\n\\r\\n" + b"x" * 20000 + b"\\r\\n"
    n = 0
    while True:
        qid = new_queue_id()
        tmp = files.tmp_dir + "/" + qid + ".msg"
        env = Envelope(id=qid, sender="a@x.test", arrival=time.time(), size=len(body),
                       recipients=[RecipientState("b@y.test")])
        if sys.argv[2] == "one-file":
            files.commit_sync(tmp, env, body)
        else:
            with open(tmp, "wb") as f:
                for i in range(0, len(body), 4096):
                    f.write(body[i:i + 4096])
            files.commit_sync(tmp, env)
        print(qid, flush=True)  # acknowledged
        n += 1
""")


@pytest.mark.parametrize("form", ["one-file", "two-file"])
def test_killed_writer_loses_no_acknowledged_message(tmp_path, form):
    root = str(tmp_path / "q")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, root, form], stdout=subprocess.PIPE,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    acked = []
    deadline = time.monotonic() + 20
    while len(acked) < 30 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acked.append(line.decode().strip())
    os.kill(proc.pid, signal.SIGKILL)
    rest = proc.stdout.read().decode().split()
    proc.wait(10)
    acked += rest
    assert len(acked) >= 30
    files = SpoolFiles(root)
    envelopes, _problems = files.load_all_sync()
    ids = {e.id for e in envelopes}
    assert set(acked) <= ids
    for e in envelopes:
        assert os.path.getsize(files.message_path(e.id)) == e.offset + e.size
    # Nothing half-written is left behind as a message.
    assert set(os.listdir(files.msg_dir)) == ids


@pytest_twisted.ensureDeferred
async def test_writer_counts_received_headers_across_chunks(tmp_path):
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    w = SpoolWriter(files, "a@b", None, None, lambda e: None, time.time)
    for chunk in (b"Rece", b"ived: one\r\nX: y\r\nreceived:", b" two\r", b"\n\r\n",
                  b"Received: in the body\r\n"):
        w.write(chunk)
    await w.commit([QueueRecipient("x@y")])
    assert w.hops == 2
    assert files.load_envelope_sync(w.id).hops == 2


@pytest_twisted.ensureDeferred
async def test_large_message_keeps_the_two_file_form(tmp_path):
    files = SpoolFiles(str(tmp_path / "q"), fsync=True)
    files.ensure_sync()
    w = SpoolWriter(files, "a@b", None, None, lambda e: None, time.time)
    body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (MEMORY_LIMIT // 1000 + 10)
    w.write(body)
    qid = await w.commit([QueueRecipient("x@y")])
    assert open(files.message_path(qid), "rb").read() == body
    env = files.load_envelope_sync(qid)
    assert env.offset == 0 and env.size == len(body)
    assert os.listdir(files.env_dir) == [qid]


@pytest_twisted.ensureDeferred
async def test_saved_envelope_overrides_the_embedded_one_and_remove_takes_both(tmp_path):
    files = SpoolFiles(str(tmp_path / "q"), fsync=True)
    files.ensure_sync()
    w = SpoolWriter(files, "a@b", None, None, lambda e: None, time.time)
    w.write(b"Subject: s\r\n\r\nbody\r\n")
    qid = await w.commit([QueueRecipient("x@y"), QueueRecipient("z@y")])
    env = files.load_envelope_sync(qid)
    env.recipients[0].attempts = 3
    await files.save_envelope(env)
    [loaded], problems = files.load_all_sync()
    assert problems == []
    assert loaded.recipients[0].attempts == 3 and loaded.offset == env.offset
    assert [(name, e.id) for name, e in files.iter_sync()] == [(qid, qid)]
    await files.remove(qid)
    assert os.listdir(files.msg_dir) == [] and os.listdir(files.env_dir) == []


def test_spool_of_the_two_file_form_still_loads(tmp_path):
    """A spool written before the one-file form: bare message files plus env/ID."""
    files = SpoolFiles(str(tmp_path / "q"), fsync=False)
    files.ensure_sync()
    env = Envelope(id="0000000000E00000000", sender="a@b", arrival=1.0, size=18,
                   recipients=[RecipientState("x@y")])
    raw = env.to_json().replace(b',"offset":0', b"")  # older envelopes have no offset
    open(files.envelope_path(env.id), "wb").write(raw)
    open(files.message_path(env.id), "wb").write(b"Subject: o\r\n\r\nold\r\n")
    [loaded], problems = files.load_all_sync()
    assert problems == [] and loaded.offset == 0 and loaded.recipients[0].address == "x@y"


@pytest_twisted.ensureDeferred
async def test_concurrent_commits_share_batches(tmp_path):
    from twisted.internet import defer

    files = SpoolFiles(str(tmp_path / "q"), fsync=True)
    files.ensure_sync()
    writers = []
    for i in range(30):
        w = SpoolWriter(files, "a@b", None, None, lambda e: None, time.time)
        w.write(b"Subject: %d\r\n\r\nbody\r\n" % i)
        writers.append(w)
    ids = await defer.gatherResults([w.commit([QueueRecipient("x@y")]) for w in writers])
    assert files.batches < 30
    assert sorted(ids) == sorted(e.id for e in files.load_all_sync()[0])
